"""The queue over real HTTP: limit, cancel, stop/skip, task queries, range delete, webhooks."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import LiveServer, start_server, wait_for_task

LIGHTNING = {"performance_selection": "Lightning"}
# Long enough to keep the single worker busy while the test looks at the queue.
SLOW = {
    "performance_selection": "Speed",
    "sampler_name": "euler",
    "scheduler_name": "karras",
    "overwrite_step": 200,
    "image_number": 3,
}


def post(server: LiveServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/engine/generate/", json={**body, "async_process": True}, timeout=60
    )


def task(server: LiveServer, task_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/tasks/{task_id}", timeout=10).json())


def wait_status(
    server: LiveServer, task_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = task(server, task_id)
        if body["task_status"] == status:
            return body
        time.sleep(0.05)
    raise TimeoutError(f"{task_id} never reached {status}: {task(server, task_id)}")


def wait_progress(server: LiveServer, task_id: str, minimum: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = task(server, task_id)
        if body["task_status"] == "running" and (body["progress"] or 0) >= minimum:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{task_id} did not progress: {task(server, task_id)}")


@pytest.fixture(scope="module")
def small_queue(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("small-queue"), demo_models, extra_env={"FOOOCUS_QUEUE_SIZE": "2"}
    )
    yield live
    live.stop(signal.SIGTERM)


def test_queue_limit_cancel_pending_and_running(small_queue: LiveServer) -> None:
    server = small_queue
    running = post(server, SLOW).json()["task_id"]
    wait_progress(server, running, 5)
    waiting_1 = post(server, LIGHTNING).json()["task_id"]
    waiting_2 = post(server, LIGHTNING).json()["task_id"]

    # Full: 503 with Retry-After, and nothing queued.
    pending_before = requests.get(f"{server.url}/tasks?query=pending", timeout=10).json()
    refused = post(server, LIGHTNING)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    pending_after = requests.get(f"{server.url}/tasks?query=pending", timeout=10).json()
    assert [t["task_id"] for t in pending_after["pending"]] == [waiting_1, waiting_2]
    assert pending_after == pending_before

    current = requests.get(f"{server.url}/tasks?query=current", timeout=10).json()
    assert [t["task_id"] for t in current["current"]] == [running]
    assert current["history"] == []
    assert current["pending"] == []

    # A waiting task becomes canceled and never runs.
    canceled = requests.post(f"{server.url}/tasks/{waiting_1}/cancel", timeout=10).json()
    assert canceled["action"] == "canceled"
    assert canceled["task"]["task_status"] == "canceled"

    # The running task stops at its next step.
    stopping = requests.post(f"{server.url}/tasks/{running}/cancel", timeout=10).json()
    assert stopping["action"] == "stopping"
    stopped = wait_for_task(server, running)
    assert stopped["task_status"] == "stop"
    assert len(stopped["result"]) < 3

    # The queue goes on: the other waiting task runs and finishes.
    assert wait_for_task(server, waiting_2)["task_status"] == "finished"
    never_ran = task(server, waiting_1)
    assert never_ran["task_status"] == "canceled"
    assert never_ran["start_mills"] is None
    assert never_ran["result"] == []


def test_cancel_is_404_for_unknown_and_noop_for_ended(small_queue: LiveServer) -> None:
    server = small_queue
    assert requests.post(f"{server.url}/tasks/{'f' * 32}/cancel", timeout=10).status_code == 404
    done = post(server, LIGHTNING).json()["task_id"]
    wait_for_task(server, done)
    again = requests.post(f"{server.url}/tasks/{done}/cancel", timeout=10).json()
    assert again["action"] == "ended"
    assert again["task"]["task_status"] == "finished"


def test_stream_of_a_canceled_waiting_task_ends_with_canceled(small_queue: LiveServer) -> None:
    server = small_queue
    blocker = post(server, SLOW).json()["task_id"]
    wait_progress(server, blocker, 1)
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        json={**LIGHTNING, "stream_output": True},
        stream=True,
        timeout=60,
    )
    task_id = response.headers["X-Task-Id"]
    lines = response.iter_lines()
    first = json.loads(next(line for line in lines if line)[6:])
    assert first["task_status"] == "pending"
    requests.post(f"{server.url}/tasks/{task_id}/cancel", timeout=10)
    events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    assert events[-1]["task_status"] == "canceled"
    assert events[-1]["message"] == "Canceled"
    requests.post(f"{server.url}/tasks/{blocker}/cancel", timeout=10)
    wait_for_task(server, blocker)


def test_skip_drops_the_current_image_and_stop_ends_the_task(small_queue: LiveServer) -> None:
    server = small_queue
    task_id = post(server, {**SLOW, "overwrite_step": 60}).json()["task_id"]
    wait_progress(server, task_id, 3)
    skipped = requests.post(f"{server.url}/v1/engine/control?action=skip", timeout=10).json()
    assert skipped["task_ids"] == [task_id]
    ended = wait_for_task(server, task_id)
    assert ended["task_status"] == "finished"
    assert len(ended["result"]) == 2
    bad = requests.post(f"{server.url}/v1/engine/control?action=explode", timeout=10)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "action"]

    task_id = post(server, SLOW).json()["task_id"]
    wait_progress(server, task_id, 3)
    requests.post(f"{server.url}/v1/engine/control?action=stop", timeout=10)
    assert wait_for_task(server, task_id)["task_status"] == "stop"


# Task queries ----------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_history_pagination_and_time_ranges(server: LiveServer) -> None:
    start = datetime.now(UTC)
    ids = []
    for _ in range(3):
        ids.append(post(server, LIGHTNING).json()["task_id"])
    for task_id in ids:
        wait_for_task(server, task_id)
    end = datetime.now(UTC)

    def history(**params: Any) -> list[str]:
        response = requests.get(
            f"{server.url}/tasks", params={"query": "history", **params}, timeout=10
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["current"] == []
        assert body["pending"] == []
        return [t["task_id"] for t in body["history"]]

    window = {"start_at": iso(start), "end_at": iso(end)}
    assert history(**window, page_size=10) == ids[::-1]
    assert history(**window, page=0, page_size=2) == [ids[2], ids[1]]
    assert history(**window, page=1, page_size=2) == [ids[0]]
    assert history(**window, page=2, page_size=2) == []
    # The same instant written in another zone selects the same tasks.
    shifted = {
        "start_at": start.astimezone(timezone_plus(8)).isoformat(),
        "end_at": end.astimezone(timezone_plus(-5)).isoformat(),
    }
    assert history(**shifted) == ids[::-1]
    # end_at defaults to now.
    assert history(start_at=iso(start)) == ids[::-1]
    assert history(start_at=iso(end + timedelta(seconds=1))) == []


def timezone_plus(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"query": "everything"}, "query"),
        ({"page": -1}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"start_at": "yesterday"}, "start_at"),
        ({"start_at": "2024-01-02T00:00:00", "end_at": "2024-01-01T00:00:00"}, "end_at"),
        ({"action": "delete"}, "start_at"),
        ({"action": "explode", "start_at": "2024-01-01T00:00:00"}, "action"),
    ],
)
def test_bad_task_queries_are_422(server: LiveServer, params: dict[str, Any], field: str) -> None:
    response = requests.get(f"{server.url}/tasks", params=params, timeout=10)
    assert response.status_code == 422, response.text
    assert any(item["loc"] == ["query", field] for item in response.json()["detail"])


def test_range_delete_removes_rows_and_output_files(server: LiveServer) -> None:
    start = datetime.now(UTC)
    done = [post(server, {**LIGHTNING, "image_number": 2}).json()["task_id"] for _ in range(2)]
    files = []
    for task_id in done:
        for url in wait_for_task(server, task_id)["result"]:
            path = server.outputs / url.split("/outputs/", 1)[1]
            assert path.is_file()
            files.append(path)
    end = datetime.now(UTC)

    # Without a range nothing is deleted.
    assert requests.delete(f"{server.url}/tasks", timeout=10).status_code == 422
    assert all(path.exists() for path in files)

    response = requests.get(
        f"{server.url}/tasks",
        params={"action": "DELETE", "start_at": iso(start), "end_at": iso(end)},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == {"deleted": 2, "files_deleted": 4}
    assert not any(path.exists() for path in files)
    for task_id in done:
        assert requests.get(f"{server.url}/tasks/{task_id}", timeout=10).status_code == 404

    # DELETE /tasks does the same; an empty range deletes nothing.
    later = requests.delete(
        f"{server.url}/tasks", params={"start_at": iso(end), "end_at": iso(end)}, timeout=10
    )
    assert later.json() == {"deleted": 0, "files_deleted": 0}


def test_range_delete_never_touches_waiting_or_running_tasks(small_queue: LiveServer) -> None:
    server = small_queue
    start = datetime.now(UTC) - timedelta(seconds=1)
    running = post(server, SLOW).json()["task_id"]
    wait_progress(server, running, 1)
    waiting = post(server, LIGHTNING).json()["task_id"]
    response = requests.delete(
        f"{server.url}/tasks",
        params={"start_at": iso(start), "end_at": iso(datetime.now(UTC))},
        timeout=10,
    )
    assert response.status_code == 200
    assert task(server, running)["task_status"] == "running"
    assert task(server, waiting)["task_status"] == "pending"
    requests.post(f"{server.url}/tasks/{running}/cancel", timeout=10)
    wait_for_task(server, waiting)


# Webhooks --------------------------------------------------------------------------------------


class Receiver:
    """A local webhook receiver that fails the first ``failures`` deliveries of each task."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.received.append(body)
                    seen = sum(1 for b in receiver.received if b["task_id"] == body["task_id"])
                status = 500 if seen <= receiver.failures else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()


def test_webhook_posts_the_task_object_once(server: LiveServer) -> None:
    receiver = Receiver()
    try:
        task_id = post(server, {**LIGHTNING, "webhook_url": receiver.url}).json()["task_id"]
        final = wait_for_task(server, task_id)
        deadline = time.monotonic() + 20
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(receiver.received) == 1
        body = receiver.received[0]
        assert isinstance(body, dict)  # one JSON encoding, not a JSON string
        assert body["task_id"] == task_id
        assert body["task_status"] == "finished"
        assert body["result"] == final["result"]
        deliveries = task(server, task_id)["webhook_deliveries"]
        assert [(d["attempt"], d["ok"], d["status_code"]) for d in deliveries] == [(1, True, 200)]
    finally:
        receiver.close()


def test_failing_webhook_is_retried_with_backoff_and_recorded(server: LiveServer) -> None:
    receiver = Receiver(failures=2)
    try:
        task_id = post(server, {**LIGHTNING, "webhook_url": receiver.url}).json()["task_id"]
        wait_for_task(server, task_id)
        deadline = time.monotonic() + 30
        deliveries: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            deliveries = task(server, task_id)["webhook_deliveries"]
            if any(d["ok"] for d in deliveries):
                break
            time.sleep(0.1)
        assert [(d["attempt"], d["ok"], d["status_code"]) for d in deliveries] == [
            (1, False, 500),
            (2, False, 500),
            (3, True, 200),
        ]
        gaps = [b["at_mills"] - a["at_mills"] for a, b in itertools.pairwise(deliveries)]
        assert gaps[1] > gaps[0] * 1.2  # back-off grows
    finally:
        receiver.close()


def test_unreachable_webhook_does_not_block_the_queue(server: LiveServer) -> None:
    dead = "http://127.0.0.1:9/hook"
    first = post(server, {**LIGHTNING, "webhook_url": dead}).json()["task_id"]
    second = post(server, LIGHTNING).json()["task_id"]
    assert wait_for_task(server, first)["task_status"] == "finished"
    assert wait_for_task(server, second)["task_status"] == "finished"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        deliveries = task(server, first)["webhook_deliveries"]
        if len(deliveries) >= 4:
            break
        time.sleep(0.1)
    assert len(deliveries) == 4
    assert not any(d["ok"] for d in deliveries)
    assert all(d["error"] for d in deliveries)
