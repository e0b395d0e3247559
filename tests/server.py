"""Start the real server (``manage.py serve``: daphne + worker) on a free port for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running ``serve`` process with its own folders."""

    port: int
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def outputs(self) -> Path:
        return self.home / "outputs"

    @property
    def inputs(self) -> Path:
        return self.home / "inputs"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def process_env(home: Path, models_dir: Path) -> dict[str, str]:
    """What every server process started by the tests shares: its folders under ``home``, the
    demo models, no downloads, and short timers."""
    return {
        **os.environ,
        "FOOOCUS_OUTPUTS_DIR": str(home / "outputs"),
        "FOOOCUS_INPUTS_DIR": str(home / "inputs"),
        "FOOOCUS_MODELS_DIR": str(models_dir),
        "FOOOCUS_ALLOW_DOWNLOADS": "0",
        "FOOOCUS_WORKER_POLL_SECONDS": "0.5",
        "FOOOCUS_WAIT_RECHECK_SECONDS": "0.5",
        "FOOOCUS_WEBHOOK_BACKOFF": "0.2",
        "DJANGO_SECRET_KEY": "tests-only-secret",
        "PYTHONUNBUFFERED": "1",
        # Two cores are shared by pytest and the servers: more torch threads only spin.
        "FOOOCUS_TORCH_THREADS": "1",
    }


def start_server(
    home: Path,
    models_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
) -> LiveServer:
    """Run ``manage.py serve --preset demo`` with folders under ``home``; wait until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **process_env(home, models_dir),
        # The webhook tests receive on 127.0.0.1.
        "FOOOCUS_ALLOW_PRIVATE_WEBHOOKS": "1",
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    log_path = home / f"server-{port}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--preset", "demo", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(port=port, home=home, process=process, log_path=log_path, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if requests.get(f"{server.url}/ping", timeout=2).text == "pong":
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start:\n{server.log()}")


def wait_for_task(server: LiveServer, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll ``GET /tasks/{id}`` until the task ends; return the task object."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{server.url}/tasks/{task_id}", timeout=10).json()
        if body["task_status"] in ("finished", "failed", "stop", "canceled"):
            return dict(body)
        time.sleep(0.1)
    server.process.send_signal(signal.SIGUSR1)  # the server prints its threads' stacks
    time.sleep(1)
    raise TimeoutError(f"task {task_id} did not end:\n{server.log()[-6000:]}")


def apikey(server: LiveServer, *args: str) -> str:
    """Run ``manage.py apikey`` against the server's own database; its output, stripped."""
    done = subprocess.run(
        [sys.executable, "manage.py", "apikey", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()
