"""Bad settings stop a process at start with a message naming the variable (Django's system
checks, ``generation/checks.py``), never with a traceback later. Each case runs the real entry
point in a fresh interpreter with the bad environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import ROOT

# Environments of values that cannot work, with the line each bad value must give (check id and
# message naming the variable). All problems of one environment are reported together.
BAD_ENVIRONMENTS = {
    "numbers": (
        {
            "FOOOCUS_QUEUE_SIZE": "abc",
            "FOOOCUS_WEBHOOK_TIMEOUT": "soon",
            "FOOOCUS_SIGNED_FILE_URLS": "maybe",
            "FOOOCUS_WORKER_LEASE_SECONDS": "-5",
            "FOOOCUS_MAX_STEPS": "0",
            "FOOOCUS_DEVICE": "tpu9",
            "DATABASE_URL": "mysql://db/fooocus",
            "REDIS_URL": "localhost:6379",
        },
        [
            "(fooocus.E001) FOOOCUS_QUEUE_SIZE is 'abc', not a whole number",
            "(fooocus.E001) FOOOCUS_WEBHOOK_TIMEOUT is 'soon', not a number",
            "(fooocus.E001) FOOOCUS_SIGNED_FILE_URLS is 'maybe'",
            "(fooocus.E002) FOOOCUS_WORKER_LEASE_SECONDS is -5; it must be more than 0",
            "(fooocus.E002) FOOOCUS_MAX_STEPS is 0; it must be at least 1",
            "(fooocus.E003) FOOOCUS_DEVICE is 'tpu9', not a device",
            "(fooocus.E004) DATABASE_URL must be a postgres:// URL, not 'mysql'",
            "(fooocus.E005) REDIS_URL must be a redis:// URL",
        ],
    ),
    "urls": (
        {
            "DATABASE_URL": "postgres://db:port/x",
            "REDIS_URL": "redis://:6379/0",
            "FOOOCUS_DEVICE": "cuda:x",
            "FOOOCUS_WORKER_HEARTBEAT_SECONDS": "30",
            "FOOOCUS_WORKER_LEASE_SECONDS": "10",
        },
        [
            "(fooocus.E004) DATABASE_URL has a bad port",
            "(fooocus.E005) REDIS_URL names no host",
            "(fooocus.E003) FOOOCUS_DEVICE is 'cuda:x', not a device",
            "(fooocus.E006) FOOOCUS_WORKER_LEASE_SECONDS (10) must be longer than "
            "FOOOCUS_WORKER_HEARTBEAT_SECONDS (30)",
        ],
    ),
    "engine switches": (
        {"FOOOCUS_VRAM": "huge", "FOOOCUS_COMPILE": "maybe", "FOOOCUS_BATCH_TASKS": "0"},
        [
            "(fooocus.E001) FOOOCUS_VRAM is 'huge'; use auto, high, normal, low or none",
            "(fooocus.E001) FOOOCUS_COMPILE is 'maybe'",
            "(fooocus.E002) FOOOCUS_BATCH_TASKS is 0; it must be at least 1",
        ],
    ),
    "no database name": (
        {"DATABASE_URL": "postgres://db:5432/"},
        ["(fooocus.E004) DATABASE_URL must name one database"],
    ),
}


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("FOOOCUS_") and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        FOOOCUS_OUTPUTS_DIR=str(home / "outputs"),
        FOOOCUS_INPUTS_DIR=str(home / "inputs"),
        DJANGO_SECRET_KEY="tests-only-secret",
        **extra,
    )
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case", BAD_ENVIRONMENTS)
def test_manage_check_names_every_bad_variable(tmp_path: Path, case: str) -> None:
    variables, lines = BAD_ENVIRONMENTS[case]
    result = run(["manage.py", "check"], environment(tmp_path, **variables))
    assert result.returncode == 1, result.stdout + result.stderr
    for line in lines:
        assert line in result.stderr
    assert result.stderr.count("(fooocus.E") == len(lines)
    assert "Traceback" not in result.stderr


def test_good_settings_pass_the_checks(tmp_path: Path) -> None:
    env = environment(
        tmp_path,
        FOOOCUS_DEVICE="cuda:1",
        FOOOCUS_QUEUE_SIZE="5",
        FOOOCUS_BATCH_TASKS="4",
        DATABASE_URL="postgres://user:secret@db.example:5432/fooocus",
        REDIS_URL="redis://redis.example:6379/0",
    )
    result = run(["manage.py", "check", "--tag", "fooocus"], env)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "command",
    [["serve", "--port", "1"], ["runworker", "fooocus-engine"], ["migrate"]],
    ids=["serve", "runworker", "migrate"],
)
def test_commands_stop_before_starting(tmp_path: Path, command: list[str]) -> None:
    env = environment(tmp_path, FOOOCUS_QUEUE_SIZE="abc", FOOOCUS_DEVICE="tpu9")
    result = run(["manage.py", *command], env)
    assert result.returncode == 1
    assert "(fooocus.E001) FOOOCUS_QUEUE_SIZE is 'abc'" in result.stderr
    assert "(fooocus.E003) FOOOCUS_DEVICE is 'tpu9'" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing ran: no migration applied, no server or worker started.
    assert "Applying" not in result.stdout
    assert "Fooocus API on" not in result.stdout
    assert "Engine worker" not in result.stdout


def test_daphne_stops_on_import_of_the_application(tmp_path: Path) -> None:
    env = environment(tmp_path, FOOOCUS_DEVICE="tpu9")
    result = run(["-m", "daphne", "-p", "1", "fooocus_site.asgi:application"], env)
    assert result.returncode == 1
    assert "(fooocus.E003) FOOOCUS_DEVICE is 'tpu9', not a device" in result.stderr
    assert "Traceback" not in result.stderr
