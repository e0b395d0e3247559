"""The worker's heartbeat: a thread that records in the database that the worker is alive, and
takes back the tasks of workers that are not (SIGKILL, a lost machine).

``beat_at`` is written with the database's clock; a worker silent for
``FOOOCUS_WORKER_LEASE_SECONDS`` is dead, and whichever worker sweeps first re-queues its task.

The heartbeat knows nothing of the worker it beats for: it is given the worker's name, a
callable that reports what the worker is doing, and a callback for when the worker's task was
taken back. What the sweep does to other tasks it announces through :mod:`generation.announce`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections

from generation.announce import Announcer
from history import selectors, services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker reports at each beat: the task it runs ("" when idle), the sampling
    steps it ran since it started (``/metrics`` derives the step rate), and the other tasks it
    runs in the same batch (``FOOOCUS_BATCH_TASKS``)."""

    task_id: str
    steps_total: int
    others: tuple[str, ...] = ()


class Heartbeat:
    """Beats for one worker and sweeps for dead ones.

    ``status`` is called at each beat; ``on_lost(task_id)`` is called (on the heartbeat's
    thread) for each task ``status`` reported that is no longer held by this worker.
    """

    def __init__(
        self,
        *,
        name: str,
        status: Callable[[], WorkerStatus],
        on_lost: Callable[[str], None],
        announcer: Announcer,
    ) -> None:
        self.name = name
        self.status = status
        self.on_lost = on_lost
        self.announcer = announcer
        self.host = _process_host()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate_mark = (0.0, 0)

    def start(self) -> None:
        """First beat, then take back what dead workers left running.

        Workers of this machine whose process is gone (an embedded server restarted at once, a
        crashed runworker) are dead now: their tasks need not wait for the lease to lapse.
        """
        try:
            self.beat()
            self.sweep(dead_workers=self.dead_local_workers())
        except Exception:
            logger.exception("could not register worker %s; the heartbeat will retry", self.name)
        self._thread = threading.Thread(target=self._loop, name="engine-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(settings.FOOOCUS_WORKER_HEARTBEAT_SECONDS):
            try:
                self.report_lost(self.beat())
                self.sweep()
            except Exception:
                logger.warning("heartbeat of %s failed", self.name, exc_info=True)
            finally:
                close_old_connections()

    def beat(self) -> tuple[str, ...]:
        """Record the worker alive with what it does; return the tasks it reported running."""
        status = self.status()
        now, steps = time.monotonic(), status.steps_total
        then, steps_then = self._rate_mark
        rate = (steps - steps_then) / (now - then) if then and now > then else 0.0
        self._rate_mark = (now, steps)
        services.worker_beat(
            name=self.name,
            hostname=self.host,
            pid=os.getpid(),
            device=settings.FOOOCUS_DEVICE,
            current_task_id=status.task_id,
            steps_total=steps,
            step_rate=round(rate, 3),
        )
        return tuple(task_id for task_id in (status.task_id, *status.others) if task_id)

    def report_lost(self, task_ids: tuple[str, ...]) -> None:
        """Call ``on_lost`` for each of ``task_ids`` this worker no longer holds."""
        for task_id in task_ids:
            if not selectors.task_held_by(task_id=task_id, worker=self.name):
                self.on_lost(task_id)

    def dead_local_workers(self) -> list[str]:
        dead = []
        for name, pid in selectors.worker_pids_on_host(hostname=self.host):
            # Our own name on an old row means a previous process that had our pid.
            if name == self.name or not _pid_alive(pid):
                dead.append(name)
        return dead

    def sweep(self, dead_workers: list[str] | None = None) -> None:
        lease = settings.FOOOCUS_WORKER_LEASE_SECONDS
        outcome = services.task_requeue_lapsed(
            lease_seconds=lease,
            max_attempts=settings.FOOOCUS_TASK_MAX_ATTEMPTS,
            dead_workers=dead_workers or [],
        )
        for task in outcome.failed:
            self.announcer.ended(task)
        if outcome.requeued:
            self.announcer.wake_workers()
        services.worker_prune(older_than_seconds=lease * 10)

    def stop(self) -> None:
        """Stop beating and unregister, so the worker no longer counts as live."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            services.worker_forget(name=self.name)
        except Exception:
            logger.warning("could not unregister worker %s", self.name, exc_info=True)


def _process_host() -> str:
    """This machine's name plus its PID namespace: containers sharing a host name (host
    networking) have separate PID spaces, and must not judge each other's pids."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}/{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
