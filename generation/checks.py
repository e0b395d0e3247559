"""Start-up checks of the settings (Django's system checks framework).

``fooocus_site/settings.py`` records what it could not read instead of raising; these checks
report it, and check the values that parse but cannot work, each as an Error whose message
names the environment variable. ``manage.py`` commands (``serve``, ``runworker``, ``migrate``,
``check``) stop on them before doing anything; ``fooocus_site.asgi`` stops daphne the same way.

Ids: ``fooocus.E001`` unreadable value, ``E002`` out of range, ``E003`` unknown device,
``E004`` bad ``DATABASE_URL``, ``E005`` bad ``REDIS_URL``, ``E006`` lease not above the beat.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core import checks

TAG = "fooocus"
# What engine.pipeline's device resolution accepts: "auto", or a torch device we support.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
DEVICE_HINT = "use auto, cpu, cuda, cuda:N (N = the GPU's index) or mps"

HINTS = {
    "fooocus.E004": "e.g. DATABASE_URL=postgres://user:password@db.example:5432/fooocus",
    "fooocus.E005": "e.g. REDIS_URL=redis://redis.example:6379/0",
}


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every problem of the settings read from the environment."""
    errors: list[checks.CheckMessage] = [
        checks.Error(f"{name} {message}.", hint=HINTS.get(check_id), id=check_id)
        for check_id, name, message in getattr(settings, "FOOOCUS_SETTINGS_PROBLEMS", [])
    ]
    device = settings.FOOOCUS_DEVICE
    if not DEVICE_PATTERN.fullmatch(device):
        errors.append(
            checks.Error(
                f"FOOOCUS_DEVICE is {device!r}, not a device.", hint=DEVICE_HINT, id="fooocus.E003"
            )
        )
    beat, lease = settings.FOOOCUS_WORKER_HEARTBEAT_SECONDS, settings.FOOOCUS_WORKER_LEASE_SECONDS
    if lease <= beat:
        errors.append(
            checks.Error(
                f"FOOOCUS_WORKER_LEASE_SECONDS ({lease:g}) must be longer than "
                f"FOOOCUS_WORKER_HEARTBEAT_SECONDS ({beat:g}): live workers would be taken "
                "for dead.",
                hint="a lease of several beats (the default is 30 s for a 5 s beat)",
                id="fooocus.E006",
            )
        )
    return errors


def settings_errors() -> list[checks.CheckMessage]:
    """The serious problems the checks above find."""
    return [m for m in checks.run_checks(tags=[TAG]) if m.is_serious()]


def stop_on_settings_errors() -> None:
    """Exit with the checks' messages when the settings cannot work (for servers that do not
    start through ``manage.py``, such as ``daphne fooocus_site.asgi:application``)."""
    errors = settings_errors()
    if errors:
        lines = "\n".join(f"  {error}" for error in errors)
        raise SystemExit(f"The settings have problems; nothing was started:\n{lines}")
