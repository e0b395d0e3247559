"""``python manage.py runworker fooocus-engine``: one engine worker process (one GPU).

This shadows Channels' own ``runworker`` (``generation`` comes before ``channels`` in
``INSTALLED_APPS``): besides listening on the channel, a worker process must run the engine
thread that claims tasks, and must hand its task back cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Run one engine worker: it claims tasks from the database and runs them on "
        "FOOOCUS_DEVICE. SIGTERM finishes the current step, re-queues the task and exits."
    )
    # Settings are checked before anything starts (generation/checks.py): a bad value stops
    # here with a message naming the variable.
    requires_system_checks = "__all__"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "channels", nargs="+", help=f"the engine channel ({settings.FOOOCUS_WORKER_CHANNEL})"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from generation.bootstrap import dump_stacks_on_sigusr1

        if options["channels"] != [settings.FOOOCUS_WORKER_CHANNEL]:
            raise CommandError(
                f"engine workers listen on {settings.FOOOCUS_WORKER_CHANNEL!r} only: "
                f"python manage.py runworker {settings.FOOOCUS_WORKER_CHANNEL}"
            )
        dump_stacks_on_sigusr1()
        asyncio.run(self._main())
        self.stdout.write("Worker stopped.")

    async def _main(self) -> None:
        from channels.layers import get_channel_layer

        from generation.bootstrap import WorkerProcess

        layer = get_channel_layer()
        if layer is None:
            raise CommandError("no channel layer is configured (set REDIS_URL)")
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        process = WorkerProcess(loop=loop, layer=layer)
        process.start()
        self.stdout.write(
            f"Engine worker {process.worker.name} on {settings.FOOOCUS_DEVICE}, "
            f"channel {settings.FOOOCUS_WORKER_CHANNEL}"
        )
        await stopping.wait()
        await process.stop()
