"""Writes to the task history. The API, the worker and the admin all go through these."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.utils import timezone

from history.admin_counts import history_changed
from history.files import output_files_delete
from history.models import (
    ENDED_STATUSES,
    Task,
    TaskKind,
    TaskStatus,
    WebhookDelivery,
    WorkerHeartbeat,
)

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds as many waiting tasks as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the queue is full ({limit} waiting tasks)")
        self.limit = limit


class KeyQueueFullError(QueueFullError):
    """This API key already has as many waiting tasks as it may."""

    def __init__(self, limit: int) -> None:
        Exception.__init__(self, f"this API key already has {limit} waiting tasks")
        self.limit = limit


class TaskLostError(Exception):
    """The worker no longer holds the task: its heartbeat lapsed and the task went back to the
    queue (or ended). Whatever it was about to record would duplicate another worker's work."""


# Any constant works; it only has to be the same in every process that enqueues.
_QUEUE_LOCK_KEY = 0x466F6F6F


def _lock_queue() -> None:
    """Serialise enqueues across processes so that "count the waiting tasks, then insert" is
    one step: under PostgreSQL's READ COMMITTED two web processes could otherwise both see 99 and
    both insert. SQLite's IMMEDIATE transactions already hold the database's write lock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_QUEUE_LOCK_KEY])


def _text(value: Any, length: int) -> str:
    return value[:length] if isinstance(value, str) else ""


def indexed_columns(req_params: dict[str, Any]) -> dict[str, str]:
    """The request fields the Task row copies into indexed columns (see ``Task.model_name``).
    Migration 0005 fills rows stored before these existed the same way."""
    return {
        "model_name": _text(req_params.get("base_model_name"), 255),
        "performance": _text(req_params.get("performance_selection"), 64),
    }


def task_create(
    *,
    req_params: dict[str, Any],
    webhook_url: str,
    base_url: str,
    queue_limit: int,
    task_id: str | None = None,
    api_key: str = "",
    key_queue_limit: int = 0,
    on_commit: Callable[[Task], None] | None = None,
    kind: str = TaskKind.GENERATE,
) -> Task:
    """Queue a new task. Refuses with :class:`QueueFullError` when ``queue_limit`` tasks wait.

    ``on_commit`` runs once the row is committed, so a worker woken by it always finds the row.
    """
    with transaction.atomic():
        _lock_queue()
        waiting = Task.objects.filter(status=TaskStatus.PENDING).count()
        if waiting >= queue_limit:
            raise QueueFullError(queue_limit)
        if key_queue_limit and (
            Task.objects.filter(status=TaskStatus.PENDING, api_key=api_key).count()
            >= key_queue_limit
        ):
            raise KeyQueueFullError(key_queue_limit)
        task = Task.objects.create(
            task_id=task_id or uuid.uuid4().hex,
            status=TaskStatus.PENDING,
            req_params=req_params,
            webhook_url=webhook_url,
            base_url=base_url,
            api_key=api_key,
            created_at=timezone.now(),
            **indexed_columns(req_params),
            kind=kind,
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


def task_claim_these(*, worker: str, pks: Iterable[int]) -> list[Task]:
    """Claim the tasks ``pks`` that are still pending for ``worker``, as :func:`task_claim_next`
    does (oldest first): a worker running a batch takes these beside the task it claimed.

    Rows another worker holds or took meanwhile are left out (``SKIP LOCKED`` on PostgreSQL; the
    conditional update on both).
    """
    wanted = sorted(set(pks))
    if not wanted:
        return []
    with transaction.atomic():
        pending = Task.objects.filter(pk__in=wanted, status=TaskStatus.PENDING)
        if connection.features.has_select_for_update_skip_locked:
            pending = pending.select_for_update(skip_locked=True)
        free = [row.pk for row in pending.only("id")]
        claimed = []
        for pk in free:
            if Task.objects.filter(pk=pk, status=TaskStatus.PENDING).update(
                status=TaskStatus.RUNNING,
                started_at=timezone.now(),
                worker=worker,
                attempts=F("attempts") + 1,
                progress=0,
            ):
                claimed.append(pk)
    return list(Task.objects.filter(pk__in=claimed).order_by("id"))


def _held(task: Task, worker: str | None) -> Any:
    rows = Task.objects.filter(pk=task.pk)
    if worker is not None:
        rows = rows.filter(status=TaskStatus.RUNNING, worker=worker)
    return rows


def task_add_image(*, task: Task, relative_path: str, seed: int, worker: str | None = None) -> None:
    """Record one finished image at once, so a crash later in the task cannot lose it.

    With ``worker``, the row must still be running on that worker, else :class:`TaskLostError`:
    a worker whose lease lapsed must not add images to a task another worker now runs.
    """
    with transaction.atomic():
        row = _held(task, worker).select_for_update().first()
        if row is None:
            raise TaskLostError(task.task_id)
        row.result = [*row.result, relative_path]
        row.seeds = [*row.seeds, seed]
        row.save(update_fields=["result", "seeds"])
    task.result, task.seeds = row.result, row.seeds


def task_set_text(*, task: Task, text: str, worker: str | None = None) -> None:
    """Record a describe task's answer (fenced on ``worker`` like :func:`task_add_image`)."""
    if not _held(task, worker).update(text=text):
        raise TaskLostError(task.task_id)
    task.text = text


def task_finish(*, task: Task, status: str, error: str = "", worker: str | None = None) -> Task:
    """End a running task with ``finished``, ``failed`` or ``stop`` and its error text.

    With ``worker``, only while that worker still holds the task (else :class:`TaskLostError`).
    """
    if status not in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.STOP):
        raise ValueError(f"not an ending status for a running task: {status}")
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "finished_at": now, "error": error}
    if status == TaskStatus.FINISHED:
        fields["progress"] = 100
    if not _held(task, worker).update(**fields):
        raise TaskLostError(task.task_id)
    task.refresh_from_db()
    return task


def task_release(*, task: Task, worker: str) -> bool:
    """Give a running task back to the queue because its worker is shutting down cleanly.

    A clean shutdown is no fault of the task, so the attempt it used is given back. Images
    already recorded stay; the next run makes only the rest. False if the worker no longer held it.
    """
    released = Task.objects.filter(
        pk=task.pk, status=TaskStatus.RUNNING, worker=worker, attempts__gt=0
    ).update(status=TaskStatus.PENDING, started_at=None, worker="", attempts=F("attempts") - 1)
    return bool(released)


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
    history_changed()
    # Files go after the commit: a failed delete must not leave rows pointing at missing files.
    files_deleted = sum(output_files_delete(list(result or [])) for _, result in doomed)
    return DeleteOutcome(len(doomed), files_deleted)


def task_delete(*, task: Task) -> int:
    """Delete one ended task and its output files (the admin's delete); return files removed."""
    if not task.is_ended:
        raise ValueError("only ended tasks can be deleted; cancel it first")
    result = list(task.result or [])
    task.delete()
    history_changed()
    return output_files_delete(result)


@dataclass(frozen=True)
class RequeueOutcome:
    """What a sweep did: task ids put back in the queue, and the tasks failed past the limit."""

    requeued: list[str]
    failed: list[Task]


def _lease_cutoff(lease_seconds: float) -> ExpressionWrapper:
    # The database's clock, not this machine's: workers on other machines may drift.
    return ExpressionWrapper(Now() - timedelta(seconds=lease_seconds), output_field=DateTimeField())


def task_requeue_lapsed(
    *, lease_seconds: float, max_attempts: int, dead_workers: Iterable[str] = ()
) -> RequeueOutcome:
    """Take back the tasks of workers that stopped beating, and of ``dead_workers``.

    A task is re-queued with the images it already has (the next run makes only the rest), or
    failed with the reason once it has been tried ``max_attempts`` times. Each row changes with
    a compare-and-set on its (status, worker), so workers sweeping at once never both act on it.
    """
    live = (
        WorkerHeartbeat.objects.filter(beat_at__gte=_lease_cutoff(lease_seconds))
        .exclude(name__in=list(dead_workers))
        .values("name")
    )
    orphans = Task.objects.filter(status=TaskStatus.RUNNING).exclude(worker__in=live)
    outcome = RequeueOutcome(requeued=[], failed=[])
    now = timezone.now()
    for pk, task_id, worker, attempts in orphans.values_list("pk", "task_id", "worker", "attempts"):
        row = Task.objects.filter(pk=pk, status=TaskStatus.RUNNING, worker=worker)
        if attempts >= max_attempts:
            error = (
                f"the worker running this task stopped answering ({worker or 'unknown'}); "
                f"tried {attempts} times, giving up"
            )
            if row.update(status=TaskStatus.FAILED, finished_at=now, error=error):
                outcome.failed.append(Task.objects.get(pk=pk))
        elif row.update(status=TaskStatus.PENDING, started_at=None, worker=""):
            outcome.requeued.append(task_id)
    if outcome.requeued or outcome.failed:
        logger.warning(
            "took back tasks of dead workers: re-queued %s, failed %s",
            outcome.requeued,
            [task.task_id for task in outcome.failed],
        )
    return outcome


def worker_beat(
    *,
    name: str,
    hostname: str,
    pid: int,
    device: str,
    current_task_id: str = "",
    steps_total: int = 0,
    step_rate: float = 0.0,
) -> None:
    """Record that worker ``name`` is alive (registering it on its first beat)."""
    fields: dict[str, Any] = {
        "beat_at": Now(),
        "current_task_id": current_task_id,
        "steps_total": steps_total,
        "step_rate": step_rate,
    }
    if not WorkerHeartbeat.objects.filter(name=name).update(**fields):
        WorkerHeartbeat.objects.create(
            name=name, hostname=hostname, pid=pid, device=device, started_at=Now(), **fields
        )


def worker_forget(*, name: str) -> None:
    """Remove a worker that shut down cleanly, so it no longer counts as live."""
    WorkerHeartbeat.objects.filter(name=name).delete()


def worker_prune(*, older_than_seconds: float) -> int:
    """Delete heartbeat rows of workers long gone (kept a while so /metrics shows them lapse)."""
    stale = WorkerHeartbeat.objects.filter(~Q(beat_at__gte=_lease_cutoff(older_than_seconds)))
    deleted, _ = stale.delete()
    return deleted


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
