"""Reads of the task history."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import connection
from django.db.models import (
    BooleanField,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Func,
    Max,
    Model,
    Q,
    QuerySet,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now
from django.db.models.sql.where import WhereNode

from history.models import (
    ENDED_STATUSES,
    Task,
    TaskKind,
    TaskStatus,
    WebhookDelivery,
    WorkerHeartbeat,
)


def _visible(queryset: QuerySet[Task], api_key: str | None) -> QuerySet[Task]:
    """``api_key=None`` sees every task; a key's prefix sees only the tasks it created."""
    return queryset if api_key is None else queryset.filter(api_key=api_key)


def task_get(*, task_id: str, api_key: str | None = None) -> Task | None:
    return _visible(Task.objects.filter(task_id=task_id), api_key).first()


def _in_range(
    queryset: QuerySet[Task], start: datetime | None, end: datetime | None
) -> QuerySet[Task]:
    if start is not None:
        queryset = queryset.filter(created_at__gte=start)
    if end is not None:
        queryset = queryset.filter(created_at__lte=end)
    return queryset


class _Unindexed(Func):
    """A column's value as an expression SQLite will not look up in an index (unary ``+``), so
    that the planner walks the index the ORDER BY needs instead. A no-op elsewhere."""

    template = "%(expressions)s"

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="+%(expressions)s", **extra)


# Below this many tasks newer than a time range, walking the id index from the newest task down
# to the range is cheaper than finding the range's highest id first.
WALK_FROM_NEWEST_BELOW = 20_000


def newest_first_in_range(
    queryset: QuerySet[Task],
    start: datetime | None,
    end: datetime | None,
    *,
    end_inclusive: bool = True,
) -> QuerySet[Task]:
    """``queryset`` (newest first) within ``[start, end]`` of enqueue time (``[start, end)``
    without ``end_inclusive``), as an id-index walk.

    Left to itself SQLite reads the whole range from the ``created_at`` index and sorts it by
    id: the cost of the range, a week being 80,000 tasks at a million. Here the walk goes down
    the id index testing ``created_at`` in its entries (the covering indexes hold it), starting
    at the range's highest id; that id is looked up only when many tasks are newer than the
    range. Ids and enqueue times need not agree for the answer to be exact: the walk tests every
    entry below the start. PostgreSQL's planner weighs this itself (it keeps correlation stats).
    """
    before = "lte" if end_inclusive else "lt"
    if connection.vendor != "sqlite" or (start is None and end is None):
        if start is not None:
            queryset = queryset.filter(created_at__gte=start)
        return queryset if end is None else queryset.filter(**{f"created_at__{before}": end})
    highest: int | None = None
    if end is not None:
        after = (
            Task.objects.filter(**{"created_at__gt" if end_inclusive else "created_at__gte": end})
            .order_by("created_at")
            .values_list("id", flat=True)
            .first()
        )
        newest = Task.objects.order_by("-id").values_list("id", flat=True).first()
        if after is not None and newest is not None and newest - after >= WALK_FROM_NEWEST_BELOW:
            # "+ 0": read the created_at index's entries, not the rows from the newest down.
            ranged = Task.objects.order_by().filter(**{f"created_at__{before}": end})
            if start is not None:
                ranged = ranged.filter(created_at__gte=start)
            highest = ranged.aggregate(top=Max(F("id") + 0))["top"]
            if highest is None:
                return queryset.none()
    moment = _Unindexed("created_at", output_field=DateTimeField())
    walked = queryset.alias(created_unindexed=moment)
    if highest is not None:
        walked = walked.filter(id__lte=highest)
    if start is not None:
        walked = walked.filter(created_unindexed__gte=start)
    if end is not None:
        walked = walked.filter(**{f"created_unindexed__{before}": end})
    return walked


M = TypeVar("M", bound=Model)


def page_rows(queryset: QuerySet[M], offset: int, limit: int) -> list[M]:
    """``list(queryset[offset:offset + limit])``, cheap however deep the page.

    An OFFSET over full rows makes the database step over every skipped row, and a task's row
    carries kilobytes of request JSON. Here the page's ids are chosen first (``SELECT id ...
    OFFSET``), which the database answers by walking a covering index of small entries (see
    ``Task.Meta.indexes``); then only those rows are read, by primary key, and put back in the
    queryset's order. Same rows, same order as the plain slice.
    """
    ids = list(queryset.values_list("pk", flat=True)[offset : offset + limit])
    if not ids:
        return []
    page = queryset.all()
    page.query.where = WhereNode()  # the ids already satisfy the filters
    by_id = {row.pk: row for row in page.filter(pk__in=ids).order_by()}
    return [by_id[pk] for pk in ids if pk in by_id]


def _page(queryset: QuerySet[Task], page: int, page_size: int) -> list[Task]:
    return page_rows(queryset, page * page_size, page_size)


# A 32-hex-digit search is a task id, not prompt words.
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# Words shorter than this match whole words only; longer ones also match words they begin.
PREFIX_MIN_LENGTH = 3


def _search_words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def task_filter_prompt(queryset: QuerySet[Task], text: str) -> QuerySet[Task]:
    """Tasks whose prompt has every word of ``text`` (a word of 3 letters or more also matches
    the words it begins: "drag" finds "dragon"), through the full-text index of migration 0006:
    FTS5 on SQLite, a stored ``tsvector`` column with a GIN index on PostgreSQL. Case is
    ignored, accents are not. A 32-hex-digit ``text`` finds the task with that id instead."""
    text = text.strip()
    if TASK_ID_PATTERN.fullmatch(text.lower()):
        return queryset.filter(task_id=text.lower())
    words = _search_words(text)
    if not words:
        return queryset.none()
    if connection.vendor == "postgresql":
        query = " & ".join(
            f"'{word}':*" if len(word) >= PREFIX_MIN_LENGTH else f"'{word}'" for word in words
        )
        condition = RawSQL(
            '"history_task"."prompt_tsv" @@ to_tsquery(\'simple\'::regconfig, %s)',
            [query],
            output_field=BooleanField(),
        )
    elif connection.vendor == "sqlite":
        query = " ".join(
            f'"{word}"*' if len(word) >= PREFIX_MIN_LENGTH else f'"{word}"' for word in words
        )
        condition = RawSQL(
            '"history_task"."id" IN (SELECT rowid FROM history_task_prompt_fts'
            " WHERE history_task_prompt_fts MATCH %s)",
            [query],
            output_field=BooleanField(),
        )
    else:
        raise NotImplementedError(f"no prompt search on the {connection.vendor} database")
    return queryset.filter(condition)


def task_list_history(
    *,
    page: int,
    page_size: int,
    start: datetime | None = None,
    end: datetime | None = None,
    api_key: str | None = None,
) -> list[Task]:
    """Ended tasks, newest first."""
    queryset = _visible(Task.objects.filter(status__in=ENDED_STATUSES), api_key).order_by("-id")
    return _page(newest_first_in_range(queryset, start, end), page, page_size)


def task_list_pending(
    *,
    page: int,
    page_size: int,
    start: datetime | None = None,
    end: datetime | None = None,
    api_key: str | None = None,
) -> list[Task]:
    """Waiting tasks in queue order (oldest first)."""
    queryset = _visible(Task.objects.filter(status=TaskStatus.PENDING), api_key).order_by("id")
    return _page(_in_range(queryset, start, end), page, page_size)


def task_list_running(*, api_key: str | None = None) -> list[Task]:
    """Running tasks: at most one per engine worker."""
    return list(_visible(Task.objects.filter(status=TaskStatus.RUNNING), api_key).order_by("id"))


def queue_depth() -> int:
    return Task.objects.filter(status=TaskStatus.PENDING).count()


def task_counts_by_status() -> dict[str, int]:
    """How many tasks are in each status (every status present, zero when none)."""
    counts = dict.fromkeys(TaskStatus.values, 0)
    for row in Task.objects.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


@dataclass(frozen=True)
class DurationHistogram:
    """Run times of ended tasks that ran: cumulative counts per upper bound (seconds)."""

    buckets: list[tuple[float, int]]
    count: int
    total_seconds: float


def task_duration_histogram(bounds: list[float]) -> DurationHistogram:
    """Histogram of ``finished_at - started_at`` over ended tasks, computed by the database."""
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    ran = Task.objects.order_by().filter(
        status__in=ENDED_STATUSES, started_at__isnull=False, finished_at__isnull=False
    )
    ran = ran.annotate(duration=duration)
    aggregates = {
        f"le{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=b)))
        for i, b in enumerate(bounds)
    }
    result = ran.aggregate(count=Count("id"), **aggregates)
    total = sum((d.total_seconds() for d in ran.values_list("duration", flat=True) if d), 0.0)
    return DurationHistogram(
        buckets=[(b, result[f"le{i}"]) for i, b in enumerate(bounds)],
        count=result["count"],
        total_seconds=total,
    )


@dataclass(frozen=True)
class WorkerState:
    name: str
    device: str
    current_task_id: str
    steps_total: int
    step_rate: float
    age_seconds: float
    beat_at: datetime


def worker_list(*, within_seconds: float | None = None) -> list[WorkerState]:
    """Registered workers with the age of their last beat (by the database's clock)."""
    rows = WorkerHeartbeat.objects.annotate(db_now=Now())
    if within_seconds is not None:
        cutoff = ExpressionWrapper(
            Now() - timedelta(seconds=within_seconds), output_field=DateTimeField()
        )
        rows = rows.filter(beat_at__gte=cutoff)
    return [
        WorkerState(
            name=row.name,
            device=row.device,
            current_task_id=row.current_task_id,
            steps_total=row.steps_total,
            step_rate=row.step_rate,
            age_seconds=max(0.0, (row.db_now - row.beat_at).total_seconds()),
            beat_at=row.beat_at,
        )
        for row in rows
    ]


def webhook_failure_count() -> int:
    """Webhook attempts that failed (each retry counts)."""
    return WebhookDelivery.objects.filter(ok=False).count()


def task_held_by(*, task_id: str, worker: str) -> bool:
    """Whether ``worker`` still runs ``task_id`` (False once its lease lapsed and it was taken)."""
    return Task.objects.filter(task_id=task_id, status=TaskStatus.RUNNING, worker=worker).exists()


def worker_pids_on_host(*, hostname: str) -> list[tuple[str, int]]:
    """``(name, pid)`` of the workers registered from ``hostname``."""
    return list(WorkerHeartbeat.objects.filter(hostname=hostname).values_list("name", "pid"))


def pending_generate_tasks(*, limit: int) -> list[Task]:
    """The oldest ``limit`` waiting generate tasks (what a batching worker looks through)."""
    rows = Task.objects.filter(status=TaskStatus.PENDING, kind=TaskKind.GENERATE).order_by("id")
    return list(rows.only("id", "task_id", "kind", "req_params", "seeds")[:limit])
