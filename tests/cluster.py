"""The scaled-out deployment for tests: a throw-away PostgreSQL database and Redis key prefix,
web processes (``daphne fooocus_site.asgi:application``) and engine workers (``manage.py
runworker fooocus-engine``), all real processes sharing them.

Used by ``tests/scaled/`` and by the system test script ``tests/system/scale_test.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.server import ROOT, free_port, process_env

POSTGRES_URL = os.environ.get("FOOOCUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("FOOOCUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_problem() -> str | None:
    """Why the scaled tests cannot run here (PostgreSQL or Redis unreachable), or None."""
    import psycopg
    import redis

    try:
        with psycopg.connect(f"{POSTGRES_URL}/postgres", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL unreachable at {POSTGRES_URL}: {exc.__class__.__name__}: {exc}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis unreachable at {REDIS_URL}: {exc.__class__.__name__}: {exc}"
    return None


@dataclass(frozen=True)
class Services:
    """One test run's own database and Redis prefix, so concurrent runs never collide."""

    database_url: str
    redis_url: str
    redis_prefix: str

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "FOOOCUS_REDIS_PREFIX": self.redis_prefix,
        }


@contextmanager
def scratch_services() -> Iterator[Services]:
    """Create ``fooocus_test_<random>`` and a Redis prefix; migrate; drop both afterwards."""
    import psycopg
    import redis

    suffix = uuid.uuid4().hex[:12]
    name = f"fooocus_test_{suffix}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    services = Services(f"{POSTGRES_URL}/{name}", REDIS_URL, f"fooocus-test-{suffix}")
    try:
        manage(services, "migrate", "--noinput")
        yield services
    finally:
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"*{services.redis_prefix}*", count=1000):
            client.delete(key)


def base_env(services: Services, home: Path, models_dir: Path) -> dict[str, str]:
    """The environment every process of the deployment shares (short timers for tests)."""
    env = {
        **process_env(home, models_dir),
        **services.env(),
        "DJANGO_SETTINGS_MODULE": "fooocus_site.settings",
        "FOOOCUS_PRESET": "demo",
        "FOOOCUS_WORKER_HEARTBEAT_SECONDS": "0.5",
        "FOOOCUS_WORKER_LEASE_SECONDS": "3",
        "FOOOCUS_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    return env


def manage(services: Services, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a management command against the scratch services; return its output."""
    full_env = {**os.environ, **services.env(), "DJANGO_SECRET_KEY": "tests-only-secret"}
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Proc:
    """One process of the deployment, restartable with the same command and environment."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send(self, sig: int) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        self.send(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_http(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()[-4000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer:\n{self.log()[-4000:]}")


@dataclass
class Cluster:
    """Web processes and workers on one scratch database and Redis prefix."""

    services: Services
    home: Path
    models_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    webs: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**base_env(self.services, self.home, self.models_dir), **self.extra_env}

    @property
    def outputs(self) -> Path:
        return self.home / "outputs"

    def add_web(self, *, wait: bool = True) -> Proc:
        port = free_port()
        name = f"web{len(self.webs) + 1}"
        args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        args.append("fooocus_site.asgi:application")
        proc = Proc(name, args, self.env, self.home / f"{name}.log", port=port).start()
        self.webs.append(proc)
        if wait:
            proc.wait_http()
        return proc

    def add_worker(self, **env: str) -> Proc:
        name = f"worker{len(self.workers) + 1}"
        args = [sys.executable, "manage.py", "runworker", "fooocus-engine"]
        proc = Proc(name, args, {**self.env, **env}, self.home / f"{name}.log").start()
        self.workers.append(proc)
        return proc

    def wait_workers(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` workers are registered with a fresh heartbeat (via /readyz)."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            try:
                seen = requests.get(f"{self.webs[0].url}/readyz", timeout=5).json()
                if seen.get("workers", 0) >= count:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        logs = "\n".join(w.log()[-2000:] for w in self.workers)
        raise RuntimeError(f"{count} workers never became live (last /readyz {seen}):\n{logs}")

    def stop_all(self) -> None:
        for proc in [*self.workers, *self.webs]:
            proc.stop(signal.SIGTERM, timeout=30)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.log()[-tail:]}" for p in [*self.webs, *self.workers]
        )
