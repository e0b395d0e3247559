"""Starting and stopping an engine worker inside a process, shared by ``serve`` (daphne and one
worker) and ``runworker`` (a worker alone).

Both need the same pieces in the same order: the engine (built on the first task, so start-up
stays fast), an announcer that sends from the worker's threads onto the event loop that owns the
channel layer, the worker thread, its registration for in-process wake-ups, and a listener on
the engine channel. Stopping reverses them; the running task goes back to the queue.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from typing import Any

from channels.layers import BaseChannelLayer
from django.conf import settings

from generation.announce import Announcer, LoopPublisher, local_worker_add, local_worker_remove
from generation.webhooks import webhook_sender
from generation.worker import EngineWorker

logger = logging.getLogger("generation")

LISTENER_RETRY_SECONDS = 2.0


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's stack: the way to see what a stuck worker does."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def build_engine() -> Any:
    """The engine on ``FOOOCUS_DEVICE`` (imported here: only worker processes load torch)."""
    from engine.pipeline import Engine
    from generation.catalog import engine_config

    engine = Engine(engine_config())
    if settings.FOOOCUS_COMPILE:
        # Compile the UNet of the preset's model for its native size before the first task.
        from generation.catalog import get_catalog

        model = get_catalog().preset("initial").defaults.get("base_model_name")
        if model:
            logger.info("compiling the UNet of %s (FOOOCUS_COMPILE=1) ...", model)
            try:
                engine.warm_up(model)
            except Exception:  # a missing file: the first task reports it properly
                logger.exception("the compile warm-up failed; the first task compiles instead")
    return engine


class WorkerProcess:
    """One engine worker running in this process, on ``loop`` and ``layer``."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, layer: BaseChannelLayer) -> None:
        self.loop = loop
        self.layer = layer
        self.worker = EngineWorker(
            engine_factory=build_engine,
            announcer=Announcer(publisher=LoopPublisher(loop, layer), webhooks=webhook_sender()),
        )
        self._listening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker thread and the channel listener (call on ``loop``'s thread)."""
        local_worker_add(self.worker.wake)
        self.worker.start()
        self._listening = self.loop.create_task(self._listen())
        logger.info("engine worker %s started on %s", self.worker.name, settings.FOOOCUS_DEVICE)

    async def _listen(self) -> None:
        from channels.worker import Worker

        from fooocus_site.asgi import application

        # A Redis restart breaks the listener; the worker still polls the database, and
        # wake-ups resume once Redis answers again.
        while True:
            listener = Worker(
                application=application,
                channels=[settings.FOOOCUS_WORKER_CHANNEL],
                channel_layer=self.layer,
            )
            try:
                await listener.arun()
            except Exception as exc:
                logger.warning("engine channel listener failed (%r); retrying", exc)
            await asyncio.sleep(LISTENER_RETRY_SECONDS)

    async def stop(self) -> None:
        """Stop after the current sampling step (the running task goes back to the queue).

        The worker's thread is joined off the loop, so the events it publishes on the way out
        (the re-queue, the last image) are still delivered."""
        logger.info("stopping worker %s (finishing the current step)", self.worker.name)
        await self.loop.run_in_executor(None, self.worker.stop)
        local_worker_remove(self.worker.wake)
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        # Let the last group_sends scheduled by the engine thread go out.
        await asyncio.sleep(0.2)
