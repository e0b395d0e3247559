"""Races on the real database, run in a child process whose settings point at PostgreSQL.

``python -m tests.scaled.race claim|enqueue|sweep`` prints one JSON line: what each of the
racing threads got, for the test to check. The pytest process itself stays on SQLite.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

THREADS = 8


def _race(threads: int, body: Callable[[int], Any]) -> list[Any]:
    """Run ``body(i)`` in ``threads`` threads released at the same instant."""
    from django.db import connection

    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = body(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    if errors:
        raise errors[0]
    return results


def _reset() -> None:
    from history.models import Task, WorkerHeartbeat

    Task.objects.all().delete()
    WorkerHeartbeat.objects.all().delete()


def claim(tasks: int) -> dict[str, Any]:
    """8 workers drain one queue; each reports the task ids it claimed."""
    from history import services
    from history.models import Task

    _reset()
    for _ in range(tasks):
        services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=10**6)

    def drain(index: int) -> list[str]:
        got = []
        while (task := services.task_claim_next(worker=f"w{index}")) is not None:
            got.append(task.task_id)
        return got

    claimed = _race(THREADS, drain)
    rows = {t.task_id: (t.status, t.worker, t.attempts) for t in Task.objects.all()}
    return {"claimed": claimed, "rows": rows}


def enqueue(limit: int, attempts: int) -> dict[str, Any]:
    """Many web requests at once against a queue limit of ``limit``."""
    from history import services
    from history.models import Task, TaskStatus

    _reset()

    def submit(index: int) -> list[str]:
        outcomes = []
        for _ in range(attempts):
            try:
                services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=limit)
                outcomes.append("queued")
            except services.QueueFullError:
                outcomes.append("full")
        return outcomes

    outcomes = _race(THREADS, submit)
    return {
        "outcomes": outcomes,
        "pending": Task.objects.filter(status=TaskStatus.PENDING).count(),
    }


def sweep(tasks: int, max_attempts: int) -> dict[str, Any]:
    """Tasks of a dead worker (no heartbeat) and of a live one; 8 workers sweep at once."""
    from history import services
    from history.models import Task, TaskStatus

    _reset()
    services.worker_beat(name="alive", hostname="h", pid=1, device="cpu")
    for index in range(tasks):
        task = services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=10**6)
        # Every third task has used up its attempts.
        attempts = max_attempts if index % 3 == 0 else 1
        Task.objects.filter(pk=task.pk).update(
            status=TaskStatus.RUNNING, worker="dead", attempts=attempts
        )
    kept = services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=10**6)
    Task.objects.filter(pk=kept.pk).update(status=TaskStatus.RUNNING, worker="alive", attempts=1)

    def run_sweep(index: int) -> dict[str, list[str]]:
        outcome = services.task_requeue_lapsed(lease_seconds=30, max_attempts=max_attempts)
        return {"requeued": outcome.requeued, "failed": [t.task_id for t in outcome.failed]}

    results = _race(THREADS, run_sweep)
    rows = {t.task_id: (t.status, t.worker, t.error) for t in Task.objects.all()}
    return {"sweeps": results, "rows": rows, "kept": kept.task_id}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fooocus_site.settings")
    import django

    django.setup()
    from django.db import connection

    assert connection.vendor == "postgresql", "set DATABASE_URL to a PostgreSQL database"
    mode = sys.argv[1]
    if mode == "claim":
        result = claim(tasks=200)
    elif mode == "enqueue":
        result = enqueue(limit=10, attempts=4)
    elif mode == "sweep":
        result = sweep(tasks=30, max_attempts=3)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
