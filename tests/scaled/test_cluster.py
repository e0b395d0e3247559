"""The scaled mode as deployed: two daphne web processes and two ``runworker`` processes on the
real PostgreSQL and Redis (the session's ``cluster``). Any web process answers for any task;
workers die and others carry on.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import psycopg
import pytest
import requests

from tests.cluster import Cluster, Proc, Services
from tests.metrics import samples, value

pytestmark = pytest.mark.e2e

# Three images of many steps: long enough to act on a task between its images.
SLOW = {
    "performance_selection": "Speed",
    "sampler_name": "euler",
    "scheduler_name": "karras",
    "overwrite_step": 30,
    "image_number": 3,
    "image_seed": 1000,
}
ENDED = {"finished", "failed", "stop", "canceled"}


def row(services: Services, task_id: str) -> dict[str, Any]:
    """The task's row, read straight from PostgreSQL."""
    with psycopg.connect(services.database_url) as conn:
        found = conn.execute(
            "SELECT status, worker, attempts, result, seeds FROM history_task WHERE task_id = %s",
            [task_id],
        ).fetchone()
    assert found is not None, task_id
    return dict(zip(["status", "worker", "attempts", "result", "seeds"], found, strict=True))


def submit(web: Proc, body: dict[str, Any]) -> str:
    response = requests.post(
        f"{web.url}/v1/engine/generate/", json={**body, "async_process": True}, timeout=30
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def get(web: Proc, task_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{web.url}/tasks/{task_id}", timeout=10).json())


def wait_for(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def wait_images(services: Services, task_id: str, count: int) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (r := row(services, task_id))["status"] == "running"
                and len(r["result"]) >= count
                and r
            ),
            f"{task_id} never had {count} image(s) while running",
        )
    )


def worker_running(cluster: Cluster, task: dict[str, Any]) -> Proc:
    """The worker process that holds the task (worker names are host:pid:device)."""
    pid = int(task["worker"].split(":")[1])
    return next(w for w in cluster.workers if w.alive and w.pid == pid)


def assert_files(cluster: Cluster, result: list[str]) -> None:
    for relative in result:
        assert (cluster.outputs / relative).is_file(), relative


def test_health_endpoints_report_the_deployment(cluster: Cluster) -> None:
    web = cluster.webs[1]
    assert requests.get(f"{web.url}/healthz", timeout=5).text == "ok"
    ready = requests.get(f"{web.url}/readyz", timeout=10)
    assert ready.status_code == 200
    body = ready.json()
    assert body["database"] == "ok"
    assert body["channel_layer"] == "ok"
    assert body["ready"] is True
    assert body["workers"] == 2
    assert isinstance(body["queue_depth"], int)
    metrics = requests.get(f"{web.url}/metrics", timeout=10)
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    figures = samples(metrics.text)
    assert value(metrics.text, "fooocus_workers_live") == 2
    assert value(metrics.text, "fooocus_queue_depth") is not None
    assert value(metrics.text, "fooocus_tasks", status="finished") is not None
    assert value(metrics.text, "fooocus_database_vendor_info", vendor="postgresql") == 1
    beats = [
        v for (name, _), v in figures.items() if name == "fooocus_worker_heartbeat_age_seconds"
    ]
    assert len(beats) == 2
    assert all(age < 3 for age in beats)


def test_stream_on_one_web_and_live_preview_on_the_other(cluster: Cluster) -> None:
    first, second = cluster.webs
    body = {**SLOW, "image_number": 1, "stream_output": True}
    seen_live: list[dict[str, Any]] = []

    def watch(task_id: str) -> None:
        # Polls the other web process while the task runs on some worker.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            task = get(second, task_id)
            if task["task_status"] == "running" and task["preview"]:
                seen_live.append(task)
                return
            if task["task_status"] in ENDED:
                return
            time.sleep(0.05)

    events = []
    with requests.post(
        f"{first.url}/v1/engine/generate/", json=body, stream=True, timeout=120
    ) as response:
        assert response.status_code == 200
        task_id = response.headers["X-Task-Id"]
        watcher = threading.Thread(target=watch, args=(task_id,))
        watcher.start()
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    watcher.join(60)
    assert events[-1]["task_status"] == "finished"
    assert events[-1]["message"] == "Finished"
    assert len(events[-1]["images"]) == 1
    assert any(e["message"].startswith("Sampling step") for e in events)
    assert seen_live
    assert seen_live[0]["preview"].startswith("data:image/")


def test_cancel_and_stop_from_the_other_web_process(cluster: Cluster) -> None:
    first, second = cluster.webs
    running = [submit(first, SLOW) for _ in range(2)]
    waiting = submit(first, SLOW)
    canceled = requests.post(f"{second.url}/tasks/{waiting}/cancel", timeout=10).json()
    assert canceled["action"] == "canceled"
    wait_images(cluster.services, running[0], 1)
    stopped = requests.post(f"{second.url}/tasks/{running[0]}/cancel", timeout=10).json()
    assert stopped["action"] == "stopping"
    ended = wait_for(lambda: (t := get(first, running[0]))["task_status"] in ENDED and t, "stop")
    assert ended["task_status"] == "stop"
    assert 1 <= len(ended["result"]) < 3  # the images made before the stop are kept
    wait_for(lambda: get(second, running[1])["task_status"] in ENDED, "second task", 120)
    assert get(second, waiting)["task_status"] == "canceled"
    assert row(cluster.services, waiting)["attempts"] == 0  # never ran


def test_sigkill_mid_task_another_worker_resumes_after_the_lease(cluster: Cluster) -> None:
    services = cluster.services
    task_id = submit(cluster.webs[0], SLOW)
    before = wait_images(services, task_id, 1)
    victim = worker_running(cluster, before)
    victim.send(signal.SIGKILL)
    victim.process.wait(10)  # type: ignore[union-attr]
    ended = wait_for(
        lambda: (r := row(services, task_id))["status"] in ENDED and r, "resume", timeout=120
    )
    assert ended["status"] == "finished"
    assert ended["attempts"] == 2
    assert ended["worker"] != before["worker"]
    # The images of the first run are kept and not made again: 3 images, one per seed.
    assert ended["result"][: len(before["result"])] == before["result"]
    assert len(ended["result"]) == 3
    assert len(set(ended["result"])) == 3
    assert ended["seeds"] == [1000, 1001, 1002]
    assert_files(cluster, ended["result"])
    victim.start()  # back to two workers for the next test
    cluster.wait_workers(2)


def test_sigterm_hands_the_task_back_and_exits(cluster: Cluster) -> None:
    services = cluster.services
    task_id = submit(cluster.webs[1], SLOW)
    before = wait_images(services, task_id, 1)
    victim = worker_running(cluster, before)
    started = time.monotonic()
    assert victim.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15  # one step, not the whole task
    ended = wait_for(
        lambda: (r := row(services, task_id))["status"] in ENDED and r, "resume", timeout=120
    )
    assert ended["status"] == "finished"
    # A clean shutdown gives its attempt back: only the run that finished counts.
    assert ended["attempts"] == 1
    assert ended["worker"] != before["worker"]
    assert ended["result"][: len(before["result"])] == before["result"]
    assert len(ended["result"]) == 3
    assert ended["seeds"] == [1000, 1001, 1002]
    assert_files(cluster, ended["result"])
    assert "returned to the queue" in victim.log()
