"""System test of the scaled mode: web processes and workers under load while workers are killed
and a web process restarts; then every task is accounted for.

By hand (PostgreSQL and Redis on 127.0.0.1; about 2-4 minutes on a 2-core machine)::

    .venv/bin/python -m tests.system.scale_test  # 300 tasks, 20 clients, 2 webs, 3 workers
    .venv/bin/python -m tests.system.scale_test --tasks 60 --clients 10

It creates its own PostgreSQL database and Redis prefix and drops them afterwards. The pytest
suite runs a smaller load (``tests/scaled/test_system.py``) through :func:`run_load`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import requests

from tests.cluster import Cluster, Proc, scratch_services

ENDED = {"finished", "failed", "stop", "canceled"}
# Short tasks, but long enough (a few tenths of a second) that a kill lands mid-task.
TASK = {"performance_selection": "Speed", "sampler_name": "euler", "overwrite_step": 12}


@dataclass
class LoadConfig:
    tasks: int = 300
    clients: int = 20
    worker_kills: int = 2
    web_restarts: int = 1
    cancel_every: int = 25  # every n-th async task is cancelled right after it is queued


@dataclass
class Outcome:
    """What one client saw for one task."""

    index: int
    mode: str
    task_id: str = ""
    http_status: int = 0
    first_event_s: float | None = None
    first_running_s: float | None = None
    final_event: dict[str, Any] | None = None
    cancelled: bool = False
    error: str = ""


@dataclass
class Report:
    outcomes: list[Outcome]
    rows: dict[str, dict[str, Any]]
    webhooks: dict[str, list[str]]
    files_on_disk: set[str]
    wall_seconds: float
    kills: int
    web_restarts: int
    problems: list[str] = field(default_factory=list)

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        first = [o.first_event_s for o in self.outcomes if o.first_event_s is not None]
        running = [o.first_running_s for o in self.outcomes if o.first_running_s is not None]
        statuses: dict[str, int] = {}
        for row in self.rows.values():
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        modes: dict[str, int] = {}
        for outcome in self.outcomes:
            modes[outcome.mode] = modes.get(outcome.mode, 0) + 1
        return {
            "tasks": len(self.outcomes),
            "modes": modes,
            "statuses": statuses,
            "rerun_after_kill": sum(1 for r in self.rows.values() if r["attempts"] > 1),
            "worker_kills": self.kills,
            "web_restarts": self.web_restarts,
            "webhooks": sum(len(v) for v in self.webhooks.values()),
            "output_files": len(self.files_on_disk),
            "wall_s": round(self.wall_seconds, 1),
            "throughput_tasks_per_s": round(len(self.outcomes) / self.wall_seconds, 2),
            "first_event_p50_ms": round(self.percentile(first, 0.5) * 1000, 1),
            "first_event_p99_ms": round(self.percentile(first, 0.99) * 1000, 1),
            "first_running_event_p50_ms": round(self.percentile(running, 0.5) * 1000, 1),
            "first_running_event_p99_ms": round(self.percentile(running, 0.99) * 1000, 1),
            "slowest_first_events": [
                (o.index, round(o.first_event_s, 2))
                for o in sorted(self.outcomes, key=lambda o: -(o.first_event_s or 0))[:3]
                if o.first_event_s is not None
            ],
            "problems": len(self.problems),
        }


class _Webhooks(BaseHTTPRequestHandler):
    received: dict[str, list[str]]
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.received.setdefault(body["task_id"], []).append(body["task_status"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def webhook_server() -> tuple[ThreadingHTTPServer, dict[str, list[str]]]:
    """A receiver for every task's webhook: a task that ended twice would call it twice."""
    received: dict[str, list[str]] = {}
    handler = type("Handler", (_Webhooks,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


class _Router:
    """Round-robin over the web processes, skipping one that is draining for a restart."""

    def __init__(self, webs: list[Proc]) -> None:
        self.webs = webs
        self.draining: set[str] = set()
        self.in_flight = dict.fromkeys((w.name for w in webs), 0)
        self.lock = threading.Lock()
        self._turn = itertools.count()

    def acquire(self) -> Proc:
        with self.lock:
            usable = [w for w in self.webs if w.name not in self.draining]
            web = usable[next(self._turn) % len(usable)]
            self.in_flight[web.name] += 1
            return web

    def release(self, web: Proc) -> None:
        with self.lock:
            self.in_flight[web.name] -= 1


def _client(router: _Router, outcome: Outcome, cancel: bool) -> None:
    web = router.acquire()
    try:
        _request(router, web, outcome, cancel)
    except Exception as exc:
        outcome.error = f"{exc.__class__.__name__}: {exc}"
    finally:
        router.release(web)


def _request(router: _Router, web: Proc, outcome: Outcome, cancel: bool) -> None:
    body: dict[str, Any] = {**TASK, "prompt": f"task {outcome.index}"}
    url = f"{web.url}/v1/engine/generate/"
    started = time.monotonic()
    if outcome.mode == "stream":
        with requests.post(
            url, json={**body, "stream_output": True}, stream=True, timeout=300
        ) as r:
            outcome.http_status, outcome.task_id = r.status_code, r.headers.get("X-Task-Id", "")
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                if outcome.first_event_s is None:
                    outcome.first_event_s = time.monotonic() - started
                if event["task_status"] == "running" and outcome.first_running_s is None:
                    outcome.first_running_s = time.monotonic() - started
                if event["task_status"] in ENDED:
                    outcome.final_event = event
        return
    if outcome.mode == "binary":
        r = requests.post(url, json=body, headers={"Accept": "image/png"}, timeout=300)
        outcome.http_status, outcome.task_id = r.status_code, r.headers.get("X-Task-Id", "")
        if r.status_code == 200 and not r.content.startswith(b"\x89PNG"):
            outcome.error = "binary answer is not a PNG"
        return
    r = requests.post(url, json={**body, "async_process": True}, timeout=60)
    outcome.http_status = r.status_code
    outcome.task_id = r.json().get("task_id", "") if r.status_code == 200 else ""
    if cancel and outcome.task_id:
        other = router.acquire()  # cancel through whichever web process comes next
        try:
            requests.post(f"{other.url}/tasks/{outcome.task_id}/cancel", timeout=30)
            outcome.cancelled = True
        finally:
            router.release(other)
    deadline = time.monotonic() + 300
    while outcome.task_id and time.monotonic() < deadline:
        state = requests.get(f"{web.url}/tasks/{outcome.task_id}", timeout=30).json()
        if state["task_status"] in ENDED:
            return
        time.sleep(0.25)


def _busy_worker(cluster: Cluster) -> Proc | None:
    """A worker process that is running a task right now (so the kill lands mid-task)."""
    with psycopg.connect(cluster.services.database_url) as conn:
        rows = conn.execute("SELECT worker FROM history_task WHERE status = 'running'").fetchall()
    pids = {int(name.split(":")[1]) for (name,) in rows if name.count(":") >= 2}
    return next((w for w in cluster.workers if w.alive and w.pid in pids), None)


def _chaos(cluster: Cluster, router: _Router, done: list[Outcome], config: LoadConfig) -> Any:
    """Kill busy workers with SIGKILL (then restart them) and restart a drained web process, at
    fixed fractions of the run."""
    stats = {"kills": 0, "web_restarts": 0}
    plan = [("kill", (i + 1) / (config.worker_kills + 2)) for i in range(config.worker_kills)]
    plan += [("web", 0.5 + i * 0.1) for i in range(config.web_restarts)]
    plan.sort(key=lambda step: step[1])

    def run() -> None:
        for action, fraction in plan:
            while sum(1 for o in done if o.task_id) < fraction * config.tasks:
                time.sleep(0.05)
            if action == "kill":
                victim = None
                while victim is None and len(done) < config.tasks:
                    victim = _busy_worker(cluster)
                    time.sleep(0.05)
                if victim is None:
                    continue
                victim.send(signal.SIGKILL)
                assert victim.process is not None
                victim.process.wait(10)
                stats["kills"] += 1
                time.sleep(1.0)
                victim.start()
            else:
                web = cluster.webs[-1]
                router.draining.add(web.name)  # as a load balancer drains a backend
                deadline = time.monotonic() + 120
                while router.in_flight[web.name] and time.monotonic() < deadline:
                    time.sleep(0.05)
                web.stop(signal.SIGTERM, timeout=30)
                web.start()
                web.wait_http()
                router.draining.discard(web.name)
                stats["web_restarts"] += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stats


def run_load(cluster: Cluster, config: LoadConfig, webhooks: dict[str, list[str]]) -> Report:
    """Drive the load and the faults, then gather what the database and the disk say."""
    router = _Router(cluster.webs)
    modes = ["async", "stream", "binary"]
    outcomes = [Outcome(index=i, mode=modes[i % 3]) for i in range(config.tasks)]
    started_ones: list[Outcome] = []
    queue = iter(outcomes)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                outcome = next(queue, None)
                if outcome is None:
                    return
                started_ones.append(outcome)
            cancel = outcome.mode == "async" and outcome.index % (config.cancel_every * 3) == 0
            _client(router, outcome, cancel)

    started = time.monotonic()
    chaos, stats = _chaos(cluster, router, started_ones, config)
    clients = [threading.Thread(target=client) for _ in range(config.clients)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.monotonic() - started
    chaos.join(180)
    time.sleep(1.0)  # the last webhooks
    with psycopg.connect(cluster.services.database_url) as conn:
        found = conn.execute(
            "SELECT task_id, status, attempts, result, error FROM history_task"
        ).fetchall()
    every_row = {
        t: {"status": s, "attempts": a, "result": r, "error": e} for t, s, a, r, e in found
    }
    ours = {o.task_id for o in outcomes}
    rows = {task_id: row for task_id, row in every_row.items() if task_id in ours}
    recorded = [path for row in every_row.values() for path in row["result"]]
    files = {
        str(path.relative_to(cluster.outputs))
        for path in cluster.outputs.glob("*/*")
        if path.is_file() and path.suffix in {".png", ".jpeg", ".webp"}
    }
    report = Report(outcomes, rows, dict(webhooks), files, wall, stats["kills"], 0)
    report.web_restarts = stats["web_restarts"]
    report.problems = check(report, recorded)
    return report


def check(report: Report, recorded: list[str]) -> list[str]:
    """Everything that must hold after the run; an empty list means it all did.

    ``recorded`` is every output file any task in the database records (the database may hold
    other tasks than this run's, and their files must be accounted for too)."""
    problems = []
    ids = [o.task_id for o in report.outcomes]
    if len(set(ids)) != len(ids) or "" in ids:
        problems.append(f"{ids.count('')} requests got no task id")
    if set(report.rows) != set(ids):
        problems.append(f"database holds {len(report.rows)} tasks for {len(ids)} requests")
    for outcome in report.outcomes:
        row = report.rows.get(outcome.task_id)
        where = f"task {outcome.index} ({outcome.mode}, {outcome.task_id})"
        if outcome.error:
            problems.append(f"{where}: {outcome.error}")
        if outcome.http_status >= 500 or outcome.http_status == 0:
            problems.append(f"{where}: HTTP {outcome.http_status}")
        if row is None:
            continue
        expected = {"canceled", "stop"} if outcome.cancelled else {"finished"}
        if row["status"] not in expected:
            problems.append(f"{where}: ended {row['status']} {row['error']}")
        if row["status"] == "finished" and len(row["result"]) != 1:
            problems.append(f"{where}: {len(row['result'])} images instead of 1")
        hooks = report.webhooks.get(outcome.task_id, [])
        if len(hooks) > 1:
            problems.append(f"{where}: ended {len(hooks)} times per its webhook: {hooks}")
        if outcome.mode == "stream":
            final = outcome.final_event
            if final is None or final["task_status"] != row["status"]:
                problems.append(f"{where}: stream ended without its final event")
            elif row["status"] == "finished" and len(final["images"]) != 1:
                problems.append(f"{where}: final event without the image URL")
    if len(recorded) != len(set(recorded)):
        problems.append("an output file is recorded on two tasks")
    missing = set(recorded) - report.files_on_disk
    orphaned = report.files_on_disk - set(recorded)
    if missing:
        problems.append(f"{len(missing)} recorded output files are missing: {sorted(missing)[:5]}")
    if orphaned:
        problems.append(f"{len(orphaned)} output files belong to no task: {sorted(orphaned)[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--webs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--web-restarts", type=int, default=1)
    args = parser.parse_args(argv)
    config = LoadConfig(args.tasks, args.clients, args.kills, args.web_restarts)
    from engine.demo.writer import create_demo_models

    hooks_server, hooks = webhook_server()
    home = Path(tempfile.mkdtemp(prefix="fooocus-scale-"))
    with scratch_services() as svc:
        create_demo_models(home / "models")
        hook_url = f"http://127.0.0.1:{hooks_server.server_address[1]}/hook"
        extra = {"FOOOCUS_WEBHOOK_URL": hook_url, "FOOOCUS_ALLOW_PRIVATE_WEBHOOKS": "1"}
        cluster = Cluster(svc, home / "run", home / "models", extra_env=extra)
        try:
            for _ in range(args.webs):
                cluster.add_web(wait=False)
            for _ in range(args.workers):
                cluster.add_worker()
            for web in cluster.webs:
                web.wait_http()
            cluster.wait_workers(args.workers)
            report = run_load(cluster, config, hooks)
        finally:
            cluster.stop_all()
    hooks_server.shutdown()
    print(json.dumps(report.summary(), indent=2))
    for problem in report.problems:
        print("PROBLEM:", problem)
    if report.problems:
        print(f"logs kept in {home / 'run'}")
        return 1
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
