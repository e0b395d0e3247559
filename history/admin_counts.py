"""Per-day task and failure counts for the changelist, cheap on a table of a million tasks."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from history.models import Task, TaskStatus

DAILY_COUNT_DAYS = 14
# Days before today only change when tasks are deleted (which starts a new generation, see
# history.services) or when a task enqueued before midnight ends: such a count lags this long.
PAST_DAYS_CACHE_SECONDS = 120
GENERATION_KEY = "fooocus:history:generation"


def history_changed() -> None:
    """Forget the cached counts of past days (tasks were deleted)."""
    cache.set(GENERATION_KEY, uuid.uuid4().hex, None)


def _day_starts(days: int) -> list[datetime]:
    """The starts of the last ``days`` days (server time zone) and of tomorrow."""
    zone = timezone.get_current_timezone()
    today = timezone.localdate()
    return [
        timezone.make_aware(datetime.combine(today - timedelta(days=back), time.min), zone)
        for back in range(days - 1, -2, -1)
    ]


def _range_counts(queryset: QuerySet[Task], starts: list[datetime]) -> list[tuple[int, int]]:
    """(tasks, failed) per day, as one statement of a count per day and kind.

    Each count is a range of an index that holds ``created_at`` (``(created_at, status)``, or
    ``(model_name, created_at)`` and the like for a filtered list): the database steps over
    that day's index entries once and reads no row. One aggregate with a FILTER per day over
    the whole window would instead test every row against every day. The per-day statement is
    compiled once with stand-in bounds and repeated with each day's.
    """
    low, high = datetime(1900, 1, 1, tzinfo=UTC), datetime(1900, 1, 2, tzinfo=UTC)
    day = queryset.order_by().filter(created_at__gte=low, created_at__lt=high)
    adapted = [connection.ops.adapt_datetimefield_value(bound) for bound in (low, high)]
    parts: list[str] = []
    params: list[Any] = []
    for kind in (day, day.filter(status=TaskStatus.FAILED)):
        sql, kind_params = kind.values("pk").query.sql_with_params()
        for start, end in itertools.pairwise(starts):
            bounds: dict[Any, Any] = {
                adapted[0]: connection.ops.adapt_datetimefield_value(start),
                adapted[1]: connection.ops.adapt_datetimefield_value(end),
            }
            # ``sql`` is Django's compiled query; every value in it is a bound parameter.
            parts.append(f"(SELECT COUNT(*) FROM ({sql}) counted)")  # noqa: S608
            params.extend(
                bounds.get(value, value) if isinstance(value, str | datetime) else value
                for value in kind_params
            )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(parts)}", params)
        row = cursor.fetchone()
    days = len(starts) - 1
    return list(zip(row[:days], row[days:], strict=True))


def _past_counts(queryset: QuerySet[Task], starts: list[datetime]) -> list[tuple[int, int]]:
    """The counts of the days before today, kept a while in the cache (per list and filter):
    at a million tasks they are two weeks of index entries to step over, the same each view."""
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    digest = hashlib.sha256(f"{sql}|{params!r}|{starts[0].isoformat()}".encode()).hexdigest()
    key = f"fooocus:admin:daily:{cache.get(GENERATION_KEY, '')}:{digest}"
    cached = cache.get(key)
    if isinstance(cached, list) and len(cached) == len(starts) - 1:
        return [(int(total), int(failed)) for total, failed in cached]
    counts = _range_counts(queryset, starts)
    cache.set(key, counts, PAST_DAYS_CACHE_SECONDS)
    return counts


def _python_counts(queryset: QuerySet[Task], starts: list[datetime]) -> list[tuple[int, int]]:
    """(tasks, failed) per day from the matching rows themselves (for a short list)."""
    counts = [[0, 0] for _ in starts[:-1]]
    rows = queryset.order_by().filter(created_at__gte=starts[0], created_at__lt=starts[-1])
    for moment, status in rows.values_list("created_at", "status"):
        index = bisect.bisect_right(starts, moment) - 1
        counts[index][0] += 1
        counts[index][1] += status == TaskStatus.FAILED
    return [(total, failed) for total, failed in counts]


def daily_counts(
    queryset: QuerySet[Task], *, days: int = DAILY_COUNT_DAYS, indexed: bool = True
) -> list[dict[str, Any]]:
    """Tasks and failures per day (server time zone) over the last ``days`` days, newest first.

    ``indexed``: the list's filters have an index that holds ``created_at`` (none, status, date,
    model or performance), so the counts come from index ranges; otherwise (a search, combined
    filters) the caller passes a short list and the rows are counted here.
    """
    zone = timezone.get_current_timezone()
    starts = _day_starts(days)
    if indexed:
        per_day = _past_counts(queryset, starts[:-1]) + _range_counts(queryset, starts[-2:])
    else:
        per_day = _python_counts(queryset, starts)
    rows: list[dict[str, Any]] = [
        {
            "day": timezone.localtime(start, zone).date(),
            "total": total,
            "failed": failed,
            "filter_query": urlencode({"created_at__gte": start, "created_at__lt": end}),
        }
        for (start, end), (total, failed) in zip(itertools.pairwise(starts), per_day, strict=True)
    ]
    rows = [row for row in reversed(rows) if row["total"]]
    peak = max((row["total"] for row in rows), default=0) or 1
    for row in rows:
        row["bar_pct"] = round(100 * row["total"] / peak)
    return rows
