"""The engine worker: one thread per GPU that claims tasks from the database and runs them.

It is started explicitly (by ``serve`` or ``runworker``), never on import. Wake-ups come through
the channel layer (:class:`EngineChannelConsumer`), and the queue is also re-checked on a timer, so
a lost message only delays a task by a few seconds.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from channels.consumer import AsyncConsumer
from django.conf import settings
from django.db import close_old_connections
from PIL import Image

from engine.types import (
    EngineError,
    EngineEvent,
    EngineInputError,
    ModelFileMissingError,
    StopAction,
)
from generation import events
from generation.params import engine_request_from_params
from generation.webhooks import WebhookSender
from history import services
from history.models import Task, TaskStatus

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], Any]


def make_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{settings.FOOOCUS_DEVICE}"


class _TaskRun:
    """The state of one running task: its row, what it produced, and how it should end."""

    def __init__(self, task: Task, publisher: events.EventPublisher) -> None:
        self.task = task
        self.publisher = publisher
        self.done_before = len(task.result)
        self.total = int(task.req_params.get("image_number", 1))
        self.shutdown = False

    def publish(self, progress: int, message: str, preview: str | None = None) -> None:
        self.publisher.publish(
            events.stream_event(
                task_id=self.task.task_id,
                status=TaskStatus.RUNNING,
                progress=progress,
                message=message,
                preview=preview,
            )
        )


class EngineWorker:
    """Runs tasks one at a time on one engine (one GPU)."""

    def __init__(
        self,
        *,
        engine_factory: EngineFactory,
        publisher: events.EventPublisher,
        name: str | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.name = name or make_worker_name()
        self._engine_factory = engine_factory
        self._engine: Any = None
        self.publisher = publisher
        self.poll_seconds = poll_seconds or settings.FOOOCUS_WORKER_POLL_SECONDS
        self.webhooks = WebhookSender()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: _TaskRun | None = None

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current sampling step; the running task goes back to the queue."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.webhooks.shutdown()

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    # The loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        if settings.FOOOCUS_TORCH_THREADS > 0:
            import torch

            torch.set_num_threads(settings.FOOOCUS_TORCH_THREADS)
        close_old_connections()
        services.task_requeue_orphans()
        while not self._stopping.is_set():
            try:
                task = services.task_claim_next(worker=self.name)
            except Exception:
                logger.exception("could not claim a task; retrying")
                task = None
            if task is None:
                close_old_connections()
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self._run_task(task)
            except Exception:
                # Recording the outcome itself failed (database gone?): log and keep serving.
                logger.exception("task %s could not be recorded", task.task_id)
            finally:
                close_old_connections()
        close_old_connections()

    def _should_stop(self, run: _TaskRun) -> StopAction | None:
        if self._stopping.is_set():
            run.shutdown = True
            return "stop"
        action = events.control_take(run.task.task_id)
        return action if action in ("stop", "skip") else None  # type: ignore[return-value]

    def _run_task(self, task: Task) -> None:
        run = _TaskRun(task, self.publisher)
        self.current = run
        logger.info("task %s started on %s", task.task_id, self.name)
        run.publish(1, "Loading models ...")
        status, error = TaskStatus.FINISHED, ""
        try:
            request = engine_request_from_params(task.req_params, skip_images=run.done_before)
            result = self.engine.generate(
                request,
                on_event=lambda event: self._on_event(run, event),
                should_stop=lambda: self._should_stop(run),
            )
            if result.stopped:
                status = TaskStatus.STOP
            elif task.req_params.get("generate_image_grid") and len(task.result) > 1:
                self._save_grid(run)
        except (EngineInputError, ModelFileMissingError, EngineError) as exc:
            status, error = TaskStatus.FAILED, str(exc)
        except Exception as exc:
            logger.exception("task %s failed", task.task_id)
            status, error = TaskStatus.FAILED, _describe_crash(exc)
        finally:
            self.current = None
        if run.shutdown:
            services.task_requeue_orphans(worker_prefix=self.name)
            logger.info("task %s returned to the queue (worker shutting down)", task.task_id)
            return
        task = services.task_finish(task=task, status=status, error=error)
        message = {
            TaskStatus.FINISHED: "Finished",
            TaskStatus.STOP: "Stopped",
            TaskStatus.FAILED: f"Failed: {error}",
        }[status]
        self.publisher.publish(
            events.stream_event(
                task_id=task.task_id,
                status=status,
                progress=100 if status == TaskStatus.FINISHED else task.progress,
                message=message,
                images=list(task.result),
            ),
            ended=True,
        )
        self.webhooks.send(task)
        logger.info("task %s ended: %s %s", task.task_id, status, error)

    def _on_event(self, run: _TaskRun, event: EngineEvent) -> None:
        if event.kind == "image" and event.image is not None:
            self._save_image(run, event)
            return
        preview = events.preview_data_url(event.preview) if event.preview is not None else None
        run.publish(event.progress, event.message, preview)

    def _save_image(self, run: _TaskRun, event: EngineEvent) -> None:
        from engine.metadata import encode_image

        assert event.image is not None
        params = run.task.req_params
        number = run.done_before + event.image.index + 1
        run.publish(event.progress, f"Saving image {number}/{run.total} to system ...")
        metadata_text = (
            event.image.metadata.get("metadata_text") if params["save_metadata_to_images"] else None
        )
        data = encode_image(
            event.image.image,
            params["output_format"],
            metadata_text if isinstance(metadata_text, str) else None,
            params["metadata_scheme"],
        )
        relative = _write_output(data, params, number - 1)
        services.task_add_image(task=run.task, relative_path=relative, seed=event.image.seed)

    def _save_grid(self, run: _TaskRun) -> None:
        images = []
        for relative in run.task.result:
            with Image.open(settings.FOOOCUS_OUTPUTS_DIR / relative) as image:
                images.append(image.convert("RGB"))
        grid = _grid(images)
        buffer = io.BytesIO()
        grid.save(buffer, format="PNG" if run.task.req_params["output_format"] == "png" else "JPEG")
        relative = _write_output(buffer.getvalue(), run.task.req_params, len(images))
        services.task_add_image(task=run.task, relative_path=relative, seed=-1)


def _write_output(data: bytes, params: dict[str, Any], index: int) -> str:
    from history.files import output_image_write

    extension = params["output_format"]
    return output_image_write(
        data=data, extension=extension, save_name=params.get("save_name"), index=index
    )


def _grid(images: list[Image.Image]) -> Image.Image:
    """Tile images on a near-square grid, like Fooocus's image wall."""
    columns = int(len(images) ** 0.5 + 0.999)
    rows = (len(images) + columns - 1) // columns
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(
            image.resize((width, height)), ((index % columns) * width, (index // columns) * height)
        )
    return grid


def _describe_crash(exc: Exception) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    if "out of memory" in text.lower():
        return f"out of GPU memory: {text}"
    return f"internal error: {text}"


# Process-wide handle to the worker started by serve/runworker, for the channel consumer.
_running_worker: EngineWorker | None = None
_running_lock = threading.Lock()


def set_running_worker(worker: EngineWorker | None) -> None:
    global _running_worker
    with _running_lock:
        _running_worker = worker


def running_worker() -> EngineWorker | None:
    return _running_worker


class EngineChannelConsumer(AsyncConsumer):
    """Receives ``task.wake`` messages on the engine channel and pokes this process's worker."""

    async def task_wake(self, message: dict[str, Any]) -> None:
        worker = running_worker()
        if worker is not None:
            worker.wake()


def wake_workers() -> None:
    """Tell the engine workers that a task is waiting (best effort: they also poll)."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.send)(settings.FOOOCUS_WORKER_CHANNEL, {"type": "task.wake"})
    except Exception:  # a lost wake-up costs at most one poll interval
        logger.warning("could not send a wake-up to the engine workers", exc_info=True)
    worker = running_worker()
    if worker is not None:
        worker.wake()
