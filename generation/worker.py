"""The engine worker: one thread per GPU that claims tasks from the database and runs them.

It is started explicitly (by ``serve`` or ``runworker``, through :mod:`generation.bootstrap`),
never on import. Wake-ups come through the channel layer
(:class:`~generation.consumers.EngineChannelConsumer`), and the queue is also re-checked on a
timer, so a lost message only delays a task by a few seconds. What happens to a task is told
through an :class:`~generation.announce.Announcer`.

Beside it a :class:`~generation.heartbeat.Heartbeat` thread reports the worker alive and takes
back the tasks of dead workers. Every write a worker makes to its task is fenced on "still running
on me", so a worker that was given up on can never duplicate another's images.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

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
from generation.announce import Announcer
from generation.heartbeat import Heartbeat, WorkerStatus
from generation.params import engine_request_from_params
from history import services
from history.models import Task, TaskKind, TaskStatus

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], Any]


def make_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{settings.FOOOCUS_DEVICE}"


class _TaskRun:
    """The state of one running task: its row, what it produced, and how it should end."""

    def __init__(self, task: Task, announcer: Announcer) -> None:
        self.task = task
        self.announcer = announcer
        # Images a previous run of this task already recorded (the grid image has seed -1).
        self.done_before = sum(1 for seed in task.seeds if seed != -1)
        self.total = int(task.req_params.get("image_number", 1))
        self.shutdown = False
        # Set when the heartbeat finds that the task was taken back from this worker.
        self.lost = False
        # In a batch: what went wrong in this task's own callbacks (it ends failed, alone).
        self.crash: Exception | None = None

    def publish(
        self, progress: int, message: str, preview: str | None = None, webhook: bool = False
    ) -> None:
        self.announcer.progress(
            self.task, progress=progress, message=message, preview=preview, webhook=webhook
        )


class EngineWorker:
    """Runs tasks one at a time on one engine (one GPU)."""

    def __init__(
        self,
        *,
        engine_factory: EngineFactory,
        announcer: Announcer,
        name: str | None = None,
        poll_seconds: float | None = None,
        batch_tasks: int | None = None,
    ) -> None:
        self.name = name or make_worker_name()
        # Up to this many compatible queued tasks run as one engine batch (1: one at a time).
        self.batch_tasks = batch_tasks or settings.FOOOCUS_BATCH_TASKS
        self._engine_factory = engine_factory
        self._engine: Any = None
        self.announcer = announcer
        self.poll_seconds = poll_seconds or settings.FOOOCUS_WORKER_POLL_SECONDS
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: _TaskRun | None = None
        # The other tasks of the batch running with ``current`` (empty when it runs alone).
        self.companions: tuple[_TaskRun, ...] = ()
        # Sampling steps run since start (the heartbeat reports them for /metrics).
        self.steps_total = 0
        self.heartbeat = Heartbeat(
            name=self.name,
            status=self.status,
            on_lost=self._task_taken_back,
            announcer=announcer,
        )
        self._cleaned_for: str | None = None

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
        self.announcer.close()

    def status(self) -> WorkerStatus:
        """What the heartbeat reports: the running task and the steps run so far."""
        run = self.current
        return WorkerStatus(
            task_id=run.task.task_id if run is not None else "",
            steps_total=self.steps_total,
            others=tuple(other.task.task_id for other in self.companions),
        )

    def _task_taken_back(self, task_id: str) -> None:
        """The heartbeat found ``task_id`` re-queued by a sweep: drop this run at its next step."""
        for run in (self.current, *self.companions):
            if run is not None and run.task.task_id == task_id:
                run.lost = True

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
        self.heartbeat.start()
        try:
            self._serve()
        finally:
            self.heartbeat.stop()
            close_old_connections()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                task = services.task_claim_next(worker=self.name)
            except Exception:
                logger.exception("could not claim a task; retrying")
                task = None
            if task is None:
                self._clean_vram_if_asked()
                close_old_connections()
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                companions = self._companions(task)
                if companions:
                    self._run_batch([task, *companions])
                else:
                    self._run_task(task)
            except Exception:
                # Recording the outcome itself failed (database gone?): log and keep serving.
                logger.exception("task %s could not be recorded", task.task_id)
            finally:
                close_old_connections()
        close_old_connections()

    def _companions(self, task: Task) -> list[Task]:
        """With ``FOOOCUS_BATCH_TASKS`` above 1: claim waiting tasks that can share ``task``'s
        engine batch. Any trouble finding them only means ``task`` runs alone."""
        if self.batch_tasks <= 1:
            return []
        from generation.batching import claim_companions

        try:
            return claim_companions(self.engine, task, self.name, self.batch_tasks - 1)
        except Exception:
            logger.exception("could not look for tasks to batch with %s", task.task_id)
            return []

    def _clean_vram_if_asked(self) -> None:
        """``GET /v1/engines/clean_vram`` (Fooocus-API): unload the models between tasks."""
        try:
            request_id = events.clean_vram_requested()
        except Exception:
            logger.warning("could not read the clean_vram request", exc_info=True)
            return
        if request_id is None or request_id == self._cleaned_for:
            return
        self._cleaned_for = request_id
        clean = getattr(self._engine, "clean_vram", None)
        if self._engine is None:
            logger.info("clean_vram %s: no models loaded on %s", request_id, self.name)
        elif clean is None:
            logger.warning(
                "clean_vram %s: this engine cannot unload its models yet (no clean_vram)",
                request_id,
            )
        else:
            clean()
            logger.info("clean_vram %s: models unloaded on %s", request_id, self.name)

    def _should_stop(self, run: _TaskRun) -> StopAction | None:
        if run.lost:
            return "stop"
        if self._stopping.is_set():
            run.shutdown = True
            return "stop"
        action = events.control_take(run.task.task_id)
        return action if action in ("stop", "skip") else None  # type: ignore[return-value]

    def _run_task(self, task: Task) -> None:
        run = _TaskRun(task, self.announcer)
        self.current = run
        logger.info("task %s started on %s", task.task_id, self.name)
        self.announcer.started(task)
        status, error = TaskStatus.FINISHED, ""
        try:
            # A previous run may have recorded every image and died before ending the task.
            stopped = False
            if task.kind != TaskKind.GENERATE:
                from generation.tools.runner import run_tool_task

                stopped = run_tool_task(self, run)
            elif run.done_before < run.total:
                request = engine_request_from_params(task.req_params, skip_images=run.done_before)
                result = self.engine.generate(
                    request,
                    on_event=lambda event: self._on_event(run, event),
                    should_stop=lambda: self._should_stop(run),
                )
                stopped = result.stopped
            if stopped:
                status = TaskStatus.STOP
            elif (
                task.req_params.get("generate_image_grid")
                and len(task.result) > 1
                and -1 not in task.seeds
            ):
                self._save_grid(run)
        except services.TaskLostError:
            run.lost = True
        except (EngineInputError, ModelFileMissingError, EngineError) as exc:
            status, error = TaskStatus.FAILED, str(exc)
        except Exception as exc:
            logger.exception("task %s failed", task.task_id)
            status, error = TaskStatus.FAILED, _describe_crash(exc)
        finally:
            self.current = None
        self._end(run, status, error)

    def _end(self, run: _TaskRun, status: str, error: str) -> None:
        """Record how ``run`` ended (or give it back when the worker shuts down) and announce it."""
        task = run.task
        if run.lost:
            logger.warning(
                "task %s was taken back from %s; dropping this run", task.task_id, self.name
            )
            return
        if run.shutdown and status == TaskStatus.STOP:
            if services.task_release(task=task, worker=self.name):
                logger.info("task %s returned to the queue (worker shutting down)", task.task_id)
                self.announcer.requeued(task, "worker shutting down")
            return
        try:
            task = services.task_finish(task=task, status=status, error=error, worker=self.name)
        except services.TaskLostError:
            logger.warning(
                "task %s was taken back from %s before it ended", task.task_id, self.name
            )
            return
        self.announcer.ended(task)
        logger.info("task %s ended: %s %s", task.task_id, status, task.error)

    def _run_batch(self, tasks: list[Task]) -> None:
        """Run compatible tasks through one ``engine.generate_many`` call. Each keeps its own
        events, stop/skip/cancel, images and ending; one that fails, fails alone."""
        from engine.batch import BatchItem

        runs = [_TaskRun(task, self.announcer) for task in tasks]
        self.current, self.companions = runs[0], tuple(runs[1:])
        ids = [task.task_id for task in tasks]
        logger.info("tasks %s started on %s as one batch of %d", ids, self.name, len(tasks))
        items, members = [], []
        outcomes: dict[int, tuple[str, str]] = {}
        try:
            for k, run in enumerate(runs):
                self.announcer.started(run.task)
                try:
                    params = run.task.req_params
                    request = engine_request_from_params(params, skip_images=run.done_before)
                except Exception as exc:
                    logger.exception("task %s failed", run.task.task_id)
                    outcomes[k] = TaskStatus.FAILED, _describe_crash(exc)
                    continue
                items.append(BatchItem(request, self._batch_events(run), self._batch_stopper(run)))
                members.append(k)
            try:
                results: list[Any] = list(self.engine.generate_many(items)) if items else []
            except Exception as exc:
                logger.exception("batch %s failed", ids)
                results = [exc] * len(items)
            for k, result in zip(members, results, strict=True):
                outcomes[k] = self._batch_outcome(runs[k], result)
        except Exception:
            logger.exception("batch %s failed", ids)
        finally:
            self.current, self.companions = None, ()
        for k, run in enumerate(runs):
            # A task left without an outcome (recording its start failed) fails, never hangs.
            status, error = outcomes.get(k, (TaskStatus.FAILED, "internal error: not run"))
            try:
                self._end(run, status, error)
            except Exception:
                logger.exception("task %s could not be recorded", run.task.task_id)

    def _batch_events(self, run: _TaskRun) -> Callable[[EngineEvent], None]:
        def on_event(event: EngineEvent) -> None:
            if run.lost or run.crash is not None:
                return
            try:
                self._on_event(run, event)
            except services.TaskLostError:
                run.lost = True
            except Exception as exc:
                logger.exception("task %s failed", run.task.task_id)
                run.crash = exc

        return on_event

    def _batch_stopper(self, run: _TaskRun) -> Callable[[], StopAction | None]:
        def should_stop() -> StopAction | None:
            if run.crash is not None:
                return "stop"
            try:
                return self._should_stop(run)
            except Exception as exc:
                logger.exception("task %s failed", run.task.task_id)
                run.crash = exc
                return "stop"

        return should_stop

    def _batch_outcome(self, run: _TaskRun, result: Any) -> tuple[str, str]:
        """The ending of one task of a batch from its engine result (or error)."""
        task = run.task
        if run.crash is not None:
            return TaskStatus.FAILED, _describe_crash(run.crash)
        if isinstance(result, EngineError):
            return TaskStatus.FAILED, str(result)
        if isinstance(result, Exception):
            return TaskStatus.FAILED, _describe_crash(result)
        if result.stopped:
            return TaskStatus.STOP, ""
        if task.req_params.get("generate_image_grid") and len(task.result) > 1:
            try:
                if -1 not in task.seeds:
                    self._save_grid(run)
            except services.TaskLostError:
                run.lost = True
            except Exception as exc:
                logger.exception("task %s failed", task.task_id)
                return TaskStatus.FAILED, _describe_crash(exc)
        return TaskStatus.FINISHED, ""

    def _on_event(self, run: _TaskRun, event: EngineEvent) -> None:
        if event.kind == "image" and event.image is not None:
            self._save_image(run, event)
            return
        # The engine reports each sampling step with this message; /metrics derives the step rate.
        if event.message.startswith("Sampling step"):
            self.steps_total += 1
        preview = events.preview_data_url(event.preview) if event.preview is not None else None
        run.publish(event.progress, event.message, preview, webhook=True)

    def _save_image(self, run: _TaskRun, event: EngineEvent) -> None:
        from engine.output.metadata import encode_image_file

        assert event.image is not None
        params = run.task.req_params
        number = run.done_before + event.image.index + 1
        run.publish(event.progress, f"Saving image {number}/{run.total} to system ...")
        metadata_text = (
            event.image.metadata.get("metadata_text") if params["save_metadata_to_images"] else None
        )
        data = encode_image_file(
            event.image.image,
            params["output_format"],
            metadata_text if isinstance(metadata_text, str) else None,
            params["metadata_scheme"],
        )
        relative = _write_output(data, params, number - 1)
        _record_image(run, relative, event.image.seed, self.name)

    def _save_grid(self, run: _TaskRun) -> None:
        from engine import encode_image_file
        from history.files import outputs_dir

        images = []
        for relative in run.task.result:
            with Image.open(outputs_dir() / relative) as image:
                images.append(image.convert("RGB"))
        params = run.task.req_params
        # The same encoder as every other output file, so a .webp grid is a WebP file.
        data = encode_image_file(
            _grid(images), params["output_format"], None, params["metadata_scheme"]
        )
        relative = _write_output(data, params, len(images))
        _record_image(run, relative, -1, self.name)


def _record_image(run: _TaskRun, relative: str, seed: int, worker: str) -> None:
    """Record a written image on the task; if the task was taken from us, the file is orphaned
    (another worker makes this image again), so it is deleted."""
    from history.files import output_files_delete

    try:
        services.task_add_image(task=run.task, relative_path=relative, seed=seed, worker=worker)
    except services.TaskLostError:
        output_files_delete([relative])
        run.lost = True
        raise


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
