"""``python manage.py serve``: the embedded mode — daphne and one engine worker in one process."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fooocus_site.settings import env_bool

logger = logging.getLogger("generation")


class Command(BaseCommand):
    help = "Serve the API (daphne) with one engine worker in this process; SQLite by default."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
        parser.add_argument("--port", type=int, default=7866, help="TCP port (default 7866)")
        parser.add_argument("--preset", default=None, help="default preset (e.g. demo)")

    def handle(self, *args: Any, **options: Any) -> None:
        # `kill -USR1 <pid>` prints every thread's stack: the way to see what a stuck worker does.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # daphne.server installs Twisted's asyncio reactor; it must come before anything else
        # imports the reactor.
        import daphne.server
        from twisted.internet import reactor

        from engine.presets import list_presets

        if options["preset"]:
            if options["preset"] not in list_presets(settings.FOOOCUS_PRESETS_DIR):
                raise CommandError(f"unknown preset {options['preset']!r}")
            settings.FOOOCUS_PRESET = options["preset"]
        call_command("migrate", interactive=False, verbosity=0)
        if settings.FOOOCUS_PRESET == "demo":
            call_command("create_demo_model", only_if_missing=True)

        from fooocus_site.asgi import application

        host, port = options["host"], options["port"]
        self._refuse_open_public_address(host)
        interface = host.replace(":", r"\:")
        server = daphne.server.Server(
            application=application,
            endpoints=[f"tcp:port={port}:interface={interface}"],
            signal_handlers=True,
            verbosity=0,
        )
        runtime: dict[str, Any] = {}
        reactor.callWhenRunning(self._start_worker, application, runtime)
        reactor.addSystemEventTrigger(
            "before",
            "shutdown",  # type: ignore[arg-type]
            self._stop_worker,
            runtime,
        )
        self.stdout.write(
            f"Fooocus API on http://{host}:{port}/ (preset {settings.FOOOCUS_PRESET}); "
            "Ctrl-C to stop"
        )
        server.run()
        self.stdout.write("Stopped.")

    @staticmethod
    def _refuse_open_public_address(host: str) -> None:
        """Keys are optional on loopback only: a server reachable from other machines without
        any key would run anybody's jobs on this GPU."""
        from generation.access import auth_enabled

        loopback = host in {"localhost", "::1"} or host.startswith("127.")
        if loopback or auth_enabled() or env_bool("FOOOCUS_ALLOW_ANONYMOUS"):
            return
        raise CommandError(
            f"refusing to serve {host} without API keys: create one with "
            "`python manage.py apikey create NAME` (or set FOOOCUS_API_KEYS), "
            "or set FOOOCUS_ALLOW_ANONYMOUS=1 to serve it open on purpose"
        )

    @staticmethod
    def _start_worker(application: Any, runtime: dict[str, Any]) -> None:
        from channels.layers import get_channel_layer
        from channels.worker import Worker

        from engine.pipeline import Engine
        from generation.catalog import engine_config
        from generation.events import EventPublisher
        from generation.worker import EngineWorker, set_running_worker

        loop = asyncio.get_event_loop()
        layer = get_channel_layer()
        worker = EngineWorker(
            engine_factory=lambda: Engine(engine_config()),
            publisher=EventPublisher(loop, layer),
        )
        set_running_worker(worker)
        worker.start()
        listener = Worker(
            application=application,
            channels=[settings.FOOOCUS_WORKER_CHANNEL],
            channel_layer=layer,
        )
        runtime["worker"] = worker
        runtime["listener"] = loop.create_task(listener.arun())
        logger.info("engine worker %s started", worker.name)

    @staticmethod
    def _stop_worker(runtime: dict[str, Any]) -> None:
        from generation.worker import set_running_worker

        worker = runtime.get("worker")
        if worker is not None:
            logger.info("stopping the engine worker (the running task goes back to the queue)")
            worker.stop()
            set_running_worker(None)
        listener = runtime.get("listener")
        if listener is not None:
            listener.cancel()
