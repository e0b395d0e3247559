"""Writes to the task history. The API, the worker and the admin all go through these."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from history.files import output_files_delete
from history.models import ENDED_STATUSES, Task, TaskStatus, WebhookDelivery

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds as many waiting tasks as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the queue is full ({limit} waiting tasks)")
        self.limit = limit


def task_create(
    *,
    req_params: dict[str, Any],
    webhook_url: str,
    base_url: str,
    queue_limit: int,
    task_id: str | None = None,
    on_commit: Callable[[Task], None] | None = None,
) -> Task:
    """Queue a new task. Refuses with :class:`QueueFullError` when ``queue_limit`` tasks wait.

    ``on_commit`` runs once the row is committed, so a worker woken by it always finds the row.
    """
    with transaction.atomic():
        waiting = Task.objects.filter(status=TaskStatus.PENDING).count()
        if waiting >= queue_limit:
            raise QueueFullError(queue_limit)
        task = Task.objects.create(
            task_id=task_id or uuid.uuid4().hex,
            status=TaskStatus.PENDING,
            req_params=req_params,
            webhook_url=webhook_url,
            base_url=base_url,
            created_at=timezone.now(),
        )
        if on_commit is not None:
            transaction.on_commit(lambda: on_commit(task))
    return task


def task_claim_next(*, worker: str) -> Task | None:
    """Atomically move the oldest pending task to ``running`` for ``worker``; None if none waits.

    PostgreSQL skips rows other workers hold (``FOR UPDATE SKIP LOCKED``); SQLite serialises
    writers, and the conditional update makes a lost race harmless on both.
    """
    for _ in range(10):
        with transaction.atomic():
            pending = Task.objects.filter(status=TaskStatus.PENDING).order_by("id")
            if connection.features.has_select_for_update_skip_locked:
                pending = pending.select_for_update(skip_locked=True)
            candidate = pending.only("id").first()
            if candidate is None:
                return None
            claimed = Task.objects.filter(pk=candidate.pk, status=TaskStatus.PENDING).update(
                status=TaskStatus.RUNNING,
                started_at=timezone.now(),
                worker=worker,
                attempts=F("attempts") + 1,
                progress=0,
            )
        if claimed:
            return Task.objects.get(pk=candidate.pk)
    return None


def task_add_image(*, task: Task, relative_path: str, seed: int) -> None:
    """Record one finished image at once, so a crash later in the task cannot lose it."""
    with transaction.atomic():
        row = Task.objects.select_for_update().get(pk=task.pk)
        row.result = [*row.result, relative_path]
        row.seeds = [*row.seeds, seed]
        row.save(update_fields=["result", "seeds"])
    task.result, task.seeds = row.result, row.seeds


def task_finish(*, task: Task, status: str, error: str = "") -> Task:
    """End a running task with ``finished``, ``failed`` or ``stop`` and its error text."""
    if status not in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.STOP):
        raise ValueError(f"not an ending status for a running task: {status}")
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "finished_at": now, "error": error}
    if status == TaskStatus.FINISHED:
        fields["progress"] = 100
    Task.objects.filter(pk=task.pk).update(**fields)
    task.refresh_from_db()
    return task


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel did: ``canceled`` (never ran), ``stopping`` (running), ``ended`` (no-op)."""

    task: Task
    action: str


def task_cancel(*, task_id: str) -> CancelOutcome | None:
    """Cancel a waiting task outright; for a running one, report that it must be stopped."""
    now = timezone.now()
    canceled = Task.objects.filter(task_id=task_id, status=TaskStatus.PENDING).update(
        status=TaskStatus.CANCELED, finished_at=now
    )
    task = Task.objects.filter(task_id=task_id).first()
    if task is None:
        return None
    if canceled:
        return CancelOutcome(task, "canceled")
    if task.status == TaskStatus.RUNNING:
        return CancelOutcome(task, "stopping")
    return CancelOutcome(task, "ended")


@dataclass(frozen=True)
class DeleteOutcome:
    deleted: int
    files_deleted: int


def task_delete_range(*, start: datetime, end: datetime) -> DeleteOutcome:
    """Delete ended tasks enqueued in ``[start, end]`` with their output files.

    Waiting and running tasks are never deleted this way; input files are shared and stay.
    """
    with transaction.atomic():
        rows = Task.objects.filter(
            created_at__gte=start, created_at__lte=end, status__in=ENDED_STATUSES
        ).select_for_update()
        doomed = list(rows.values_list("id", "result"))
        Task.objects.filter(id__in=[pk for pk, _ in doomed]).delete()
    # Files go after the commit: a failed delete must not leave rows pointing at missing files.
    files_deleted = sum(output_files_delete(list(result or [])) for _, result in doomed)
    return DeleteOutcome(len(doomed), files_deleted)


def task_delete(*, task: Task) -> int:
    """Delete one ended task and its output files (the admin's delete); return files removed."""
    if not task.is_ended:
        raise ValueError("only ended tasks can be deleted; cancel it first")
    result = list(task.result or [])
    task.delete()
    return output_files_delete(result)


def task_requeue_orphans(*, worker_prefix: str = "", max_attempts: int = 3) -> int:
    """Put tasks left ``running`` by a dead worker back in the queue (or fail them past the limit).

    Called when a worker starts. In the embedded mode every running row belongs to a previous
    process of this server, since only one worker exists.
    """
    orphans = Task.objects.filter(status=TaskStatus.RUNNING)
    if worker_prefix:
        orphans = orphans.filter(worker__startswith=worker_prefix)
    now = timezone.now()
    failed = orphans.filter(attempts__gte=max_attempts).update(
        status=TaskStatus.FAILED,
        finished_at=now,
        error=f"the worker running this task died {max_attempts} times; giving up",
    )
    requeued = orphans.update(status=TaskStatus.PENDING, started_at=None, worker="")
    if requeued or failed:
        logger.warning("re-queued %d and failed %d orphaned running tasks", requeued, failed)
    return requeued


def webhook_delivery_record(
    *, task: Task, url: str, attempt: int, status_code: int | None, ok: bool, error: str = ""
) -> WebhookDelivery:
    """Record one webhook attempt (its outcome is shown on the task and in the admin)."""
    return WebhookDelivery.objects.create(
        task=task,
        url=url,
        attempt=attempt,
        attempted_at=timezone.now(),
        status_code=status_code,
        ok=ok,
        error=error[:2000],
    )
