"""``python manage.py serve``: the embedded mode — daphne and one engine worker in one process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fooocus_site.settings import env_bool

logger = logging.getLogger("generation")


class Command(BaseCommand):
    help = "Serve the API (daphne) with one engine worker in this process; SQLite by default."
    # Settings are checked before anything starts (generation/checks.py): a bad value stops
    # here with a message naming the variable.
    requires_system_checks = "__all__"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
        parser.add_argument("--port", type=int, default=7866, help="TCP port (default 7866)")
        parser.add_argument("--preset", default=None, help="default preset (e.g. demo)")

    def handle(self, *args: Any, **options: Any) -> None:
        from generation.bootstrap import dump_stacks_on_sigusr1

        dump_stacks_on_sigusr1()
        # daphne.server installs Twisted's asyncio reactor; it must come before anything else
        # imports the reactor.
        import daphne.server
        from twisted.internet import defer, reactor

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
        reactor.callWhenRunning(self._start_worker, runtime)
        # daphne's own handlers take SIGTERM/SIGINT to a reactor shutdown; the shutdown waits
        # for the worker to hand its task back.
        reactor.addSystemEventTrigger(
            "before",
            "shutdown",  # type: ignore[arg-type]
            lambda: defer.Deferred.fromFuture(asyncio.ensure_future(self._stop_worker(runtime))),
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
    def _start_worker(runtime: dict[str, Any]) -> None:
        from channels.layers import get_channel_layer

        from generation.bootstrap import WorkerProcess

        process = WorkerProcess(loop=asyncio.get_event_loop(), layer=get_channel_layer())
        process.start()
        runtime["process"] = process

    @staticmethod
    async def _stop_worker(runtime: dict[str, Any]) -> None:
        process = runtime.get("process")
        if process is not None:
            await process.stop()
