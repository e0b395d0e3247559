"""Reads of the task history."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from history.models import ENDED_STATUSES, Task, TaskStatus


def task_get(*, task_id: str) -> Task | None:
    return Task.objects.filter(task_id=task_id).first()


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
    *, page: int, page_size: int, start: datetime | None = None, end: datetime | None = None
) -> list[Task]:
    """Ended tasks, newest first."""
    queryset = Task.objects.filter(status__in=ENDED_STATUSES).order_by("-id")
    return _page(_in_range(queryset, start, end), page, page_size)


def task_list_pending(
    *, page: int, page_size: int, start: datetime | None = None, end: datetime | None = None
) -> list[Task]:
    """Waiting tasks in queue order (oldest first)."""
    queryset = Task.objects.filter(status=TaskStatus.PENDING).order_by("id")
    return _page(_in_range(queryset, start, end), page, page_size)


def task_list_running() -> list[Task]:
    """Running tasks: at most one per engine worker."""
    return list(Task.objects.filter(status=TaskStatus.RUNNING).order_by("id"))


def queue_depth() -> int:
    return Task.objects.filter(status=TaskStatus.PENDING).count()
