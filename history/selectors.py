"""Reads of the task history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, DateTimeField, DurationField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import Now

from history.models import ENDED_STATUSES, Task, TaskStatus, WebhookDelivery, WorkerHeartbeat


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


def _page(queryset: QuerySet[Task], page: int, page_size: int) -> list[Task]:
    offset = page * page_size
    return list(queryset[offset : offset + page_size])


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
    return _page(_in_range(queryset, start, end), page, page_size)


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
