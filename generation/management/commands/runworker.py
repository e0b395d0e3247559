"""``python manage.py runworker fooocus-engine``: one engine worker process (one GPU).

This shadows Channels' own ``runworker`` (``generation`` comes before ``channels`` in
``INSTALLED_APPS``): besides listening on the channel, a worker process must run the engine
thread that claims tasks, and must hand its task back cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

logger = logging.getLogger("generation")


class Command(BaseCommand):
    help = (
        "Run one engine worker: it claims tasks from the database and runs them on "
        "FOOOCUS_DEVICE. SIGTERM finishes the current step, re-queues the task and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "channels", nargs="+", help=f"the engine channel ({settings.FOOOCUS_WORKER_CHANNEL})"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["channels"] != [settings.FOOOCUS_WORKER_CHANNEL]:
            raise CommandError(
                f"engine workers listen on {settings.FOOOCUS_WORKER_CHANNEL!r} only: "
                f"python manage.py runworker {settings.FOOOCUS_WORKER_CHANNEL}"
            )
        # `kill -USR1 <pid>` prints every thread's stack: the way to see what a stuck worker does.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        asyncio.run(self._main())
        self.stdout.write("Worker stopped.")

    async def _main(self) -> None:
        from channels.layers import get_channel_layer
        from channels.worker import Worker

        from engine.pipeline import Engine
        from fooocus_site.asgi import application
        from generation.catalog import engine_config
        from generation.events import EventPublisher
        from generation.worker import EngineWorker, set_running_worker

        loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        if layer is None:
            raise CommandError("no channel layer is configured (set REDIS_URL)")
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

        worker = EngineWorker(
            engine_factory=lambda: Engine(engine_config()),
            publisher=EventPublisher(loop, layer),
        )
        set_running_worker(worker)
        worker.start()

        async def listen() -> None:
            # A Redis restart breaks the listener; the worker still polls the database, and
            # wake-ups resume once Redis answers again.
            while True:
                listener = Worker(
                    application=application,
                    channels=[settings.FOOOCUS_WORKER_CHANNEL],
                    channel_layer=layer,
                )
                try:
                    await listener.arun()
                except Exception as exc:
                    logger.warning("engine channel listener failed (%r); retrying", exc)
                await asyncio.sleep(2)

        listening = loop.create_task(listen())
        self.stdout.write(
            f"Engine worker {worker.name} on {settings.FOOOCUS_DEVICE}, "
            f"channel {settings.FOOOCUS_WORKER_CHANNEL}"
        )
        await stopping.wait()
        logger.info("stopping worker %s (finishing the current step)", worker.name)
        # stop() blocks until the engine thread is done; the loop keeps running meanwhile so the
        # events it publishes on the way out (the re-queue, the last image) are still delivered.
        await loop.run_in_executor(None, worker.stop)
        set_running_worker(None)
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        # Let the last group_sends scheduled by the engine thread go out.
        await asyncio.sleep(0.2)
