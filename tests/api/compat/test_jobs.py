"""Fooocus-API's job routes over real HTTP: query-job (with step previews), job-queue,
job-history (pagination, delete), stop, clean_vram; its error codes (404 job, 409 queue full,
400 cancelled), its webhook body (signed), and API-key scopes on its routes."""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from generation.webhooks import verify
from tests.api.compat.helpers import (
    LIGHTNING,
    SLOW,
    b64,
    png_bytes,
    post_json,
    query_job,
    task_of,
    wait_job,
    wait_running,
)
from tests.server import LiveServer, apikey, start_server, wait_for_task

T2I = "/v1/generation/text-to-image"
ADMIN = "compat-admin-key-for-tests"
SECRET = "compat-webhook-secret"


def history(server: LiveServer, **params: Any) -> requests.Response:
    return requests.get(f"{server.url}/v1/generation/job-history", params=params, timeout=10)


def submit_async(server: LiveServer, body: dict[str, Any], path: str = T2I) -> str:
    response = post_json(server, path, {**body, "async_process": True})
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


def test_query_job_unknown_bad_and_missing_ids(server: LiveServer) -> None:
    for job_id in ("0" * 32, "00000000-0000-0000-0000-000000000000", "not-a-job"):
        response = query_job(server, job_id)
        assert response.status_code == 404
        assert response.json() == {
            "job_id": "",
            "job_type": "Not Found",
            "job_stage": "ERROR",
            "job_progress": 0,
            "job_status": "Job not found",
            "job_step_preview": None,
            "job_result": None,
        }
    missing = requests.get(f"{server.url}/v1/generation/query-job", timeout=10)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "job_id"]


def test_query_job_finds_tasks_of_every_route_with_or_without_dashes(server: LiveServer) -> None:
    # A task queued through FooocusAPI's route is a job too.
    task = requests.post(
        f"{server.url}/v1/engine/generate/",
        json={**LIGHTNING, "uov_method": "Vary (Subtle)", "uov_input_image": b64(png_bytes())},
        headers={"Accept": "application/json"},
        timeout=180,
    ).json()
    for job_id in (task["task_id"], task["task_id"].upper()):
        job = query_job(server, job_id).json()
        assert job["job_type"] == "Image Upscale or Variation"
        assert job["job_stage"] == "SUCCESS"
        assert job["job_result"][0]["seed"] == str(task["seeds"][0])
        assert (
            job["job_result"][0]["url"].split("/files/")[1]
            == task["result"][0].split("/outputs/")[1]
        )


def test_running_job_progress_and_step_preview_then_stop(server: LiveServer) -> None:
    job_id = submit_async(server, {**SLOW, "image_number": 1})
    running = wait_running(server, job_id)
    assert running["job_stage"] == "RUNNING"
    assert running["job_status"]
    deadline = time.monotonic() + 60
    while running["job_step_preview"] is None and time.monotonic() < deadline:
        running = query_job(server, job_id, require_step_preview=True).json()
    preview = Image.open(io.BytesIO(base64.b64decode(running["job_step_preview"])))
    assert preview.format == "PNG"  # a bare base64 PNG, as Fooocus-API sends it
    assert query_job(server, job_id).json()["job_step_preview"] is None  # only when asked
    queue = requests.get(f"{server.url}/v1/generation/job-queue", timeout=10).json()
    assert queue["running_size"] >= 1
    assert queue["last_job_id"] == job_id
    stopped = requests.post(f"{server.url}/v1/generation/stop", timeout=10)
    assert stopped.json() == {"msg": "success"}
    ended = wait_job(server, job_id)
    assert ended["job_stage"] == "ERROR"
    assert ended["job_status"] == "Stopped"
    assert ended["job_result"][0]["finish_reason"] == "USER_CANCEL"
    assert task_of(server, job_id)["task_status"] == "stop"


def test_a_stopped_binary_request_is_400_user_cancel(server: LiveServer) -> None:
    answers: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            post_json(server, T2I, {**SLOW, "image_number": 1}, headers={"Accept": "image/png"})
        )
    )
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = history(server).json()["queue"]
        if running and running[0]["start_mills"]:
            break
        time.sleep(0.05)
    job_id = running[0]["job_id"]
    wait_running(server, job_id)
    requests.post(f"{server.url}/v1/generation/stop", timeout=10)
    thread.join(120)
    assert answers[0].status_code == 400
    assert answers[0].text == "USER_CANCEL"


def test_jobs_share_the_queue_with_tasks_in_order(server: LiveServer) -> None:
    blocker = submit_async(server, {**SLOW, "image_number": 1})
    wait_running(server, blocker)
    v2_job = submit_async(
        server, {**LIGHTNING, "image_prompts": []}, path="/v2/generation/text-to-image-with-ip"
    )
    plain = requests.post(
        f"{server.url}/v1/engine/generate/", json={**LIGHTNING, "async_process": True}, timeout=30
    ).json()["task_id"]
    queue = history(server).json()["queue"]
    assert [item["job_id"].replace("-", "") for item in queue] == [
        blocker.replace("-", ""),
        v2_job.replace("-", ""),
        plain,
    ]
    assert [item["is_finished"] for item in queue] == [False, False, False]
    pending = requests.get(f"{server.url}/tasks", params={"query": "pending"}, timeout=10).json()
    assert [t["task_id"] for t in pending["pending"]] == [v2_job.replace("-", ""), plain]
    waiting = query_job(server, v2_job).json()
    assert waiting["job_stage"] == "WAITING"
    # Only ended jobs are deleted.
    refused = history(server, job_id=v2_job, delete="true")
    assert refused.status_code == 409
    # A waiting job cancelled through /tasks ends as Fooocus-API's USER_CANCEL.
    requests.post(f"{server.url}/tasks/{v2_job.replace('-', '')}/cancel", timeout=10)
    canceled = query_job(server, v2_job).json()
    assert canceled["job_stage"] == "ERROR"
    assert canceled["job_result"][0]["finish_reason"] == "USER_CANCEL"
    requests.post(f"{server.url}/v1/generation/stop", timeout=10)
    assert wait_for_task(server, plain)["task_status"] == "finished"


def test_job_history_pages_filters_and_deletes(server: LiveServer) -> None:
    ids = [submit_async(server, {**LIGHTNING, "image_seed": seed}) for seed in (1, 2, 3)]
    for job_id in ids:
        wait_job(server, job_id)
    first = history(server, page=0, page_size=2).json()["history"]
    second = history(server, page=1, page_size=2).json()["history"]
    assert [item["job_id"] for item in first] == [ids[2], ids[1]]
    assert second[0]["job_id"] == ids[0]
    assert sorted(first[0]) == sorted(
        [
            "job_id",
            "job_type",
            "is_finished",
            "in_queue_mills",
            "start_mills",
            "finish_mills",
            "job_status",
        ]
    )
    assert first[0]["is_finished"] is True
    assert first[0]["finish_mills"] >= first[0]["start_mills"] >= first[0]["in_queue_mills"]
    only = history(server, job_id=ids[1]).json()
    assert [item["job_id"] for item in only["history"]] == [ids[1]]
    assert only["queue"] == []

    url = query_job(server, ids[1]).json()["job_result"][0]["url"]
    assert requests.get(url, timeout=10).status_code == 200
    deleted = history(server, job_id=ids[1], delete="true")
    assert deleted.json() == {"message": "Deleted"}
    assert requests.get(url, timeout=10).status_code == 404
    assert query_job(server, ids[1]).status_code == 404
    again = history(server, job_id=ids[1], delete="true")
    assert again.status_code == 404
    assert again.json() == {"message": "Not found"}
    no_id = history(server, delete="true")
    assert no_id.status_code == 422
    assert history(server, page_size=0).status_code == 422


def test_clean_vram_reaches_the_worker(server: LiveServer) -> None:
    response = requests.get(f"{server.url}/v1/engines/clean_vram", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "ok"
    deadline = time.monotonic() + 30
    while f"clean_vram {body['request_id']}" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)


def test_files_route_converts_on_accept_and_accept_query(server: LiveServer) -> None:
    results = post_json(server, T2I, LIGHTNING, headers={"Accept": "application/json"}).json()
    url = results[0]["url"]
    assert "/files/" in url
    as_webp = requests.get(url, headers={"Accept": "image/webp"}, timeout=10)
    assert as_webp.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(as_webp.content)).format == "WEBP"
    as_jpeg = requests.get(f"{url}?accept=image/jpeg", headers={"Accept": "image/webp"}, timeout=10)
    assert Image.open(io.BytesIO(as_jpeg.content)).format == "JPEG"
    day = url.split("/files/")[1].split("/")[0]
    for bad in (f"/files/{day}/..%2Fdb.sqlite3", f"/files/{day}/missing.png", "/files/../x/y"):
        assert requests.get(f"{server.url}{bad}", timeout=10).status_code == 404


# One server with API keys, a webhook secret, a one-task queue and URL inputs allowed ---------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("compat-keyed"),
        demo_models,
        extra_env={
            "FOOOCUS_API_KEYS": ADMIN,
            "FOOOCUS_WEBHOOK_SECRET": SECRET,
            "FOOOCUS_QUEUE_SIZE": "1",
            "FOOOCUS_ALLOW_PRIVATE_URLS": "1",
        },
    )
    yield live
    live.stop(signal.SIGTERM)


def call(server: LiveServer, method: str, path: str, key: str | None, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if key:
        headers["X-API-KEY"] = key
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=120, **kw)


class Receiver:
    """A local webhook receiver keeping each delivery's headers and raw body."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", T2I),
        ("POST", "/v2/generation/text-to-image-with-ip"),
        ("GET", "/v1/generation/query-job?job_id=x"),
        ("GET", "/v1/generation/job-queue"),
        ("GET", "/v1/generation/job-history"),
        ("POST", "/v1/generation/stop"),
        ("GET", "/v1/engines/clean_vram"),
    ],
)
def test_fooocus_api_routes_need_a_key(keyed: LiveServer, method: str, path: str) -> None:
    assert call(keyed, method, path, None, json=LIGHTNING).status_code == 401
    assert call(keyed, method, path, "fk_wrong_key", json=LIGHTNING).status_code == 401


def test_scopes_and_visibility_on_fooocus_api_routes(keyed: LiveServer) -> None:
    alice = apikey(keyed, "create", "alice")  # generate + read
    bob = apikey(keyed, "create", "bob")
    reader = apikey(keyed, "create", "reader", "--scope", "read")
    assert call(keyed, "POST", T2I, reader, json=LIGHTNING).status_code == 403
    response = call(keyed, "POST", T2I, alice, json={**LIGHTNING, "async_process": True})
    assert response.status_code == 200, response.text
    job_id = response.json()["job_id"]
    path = f"/v1/generation/query-job?job_id={job_id}"
    for key in (alice, ADMIN):
        deadline = time.monotonic() + 120
        while call(keyed, "GET", path, key).json()["job_stage"] not in ("SUCCESS", "ERROR"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert call(keyed, "GET", path, bob).status_code == 404  # another key's job is not seen
    assert call(keyed, "GET", "/v1/generation/job-history", bob).json()["history"] == []
    assert call(keyed, "GET", "/v1/generation/job-queue", bob).json()["last_job_id"] is None
    assert call(keyed, "GET", f"/tasks/{job_id.replace('-', '')}", alice).status_code == 200
    # Deleting: not another key's job; stop and clean_vram need the admin scope.
    delete = f"/v1/generation/job-history?job_id={job_id}&delete=true"
    assert call(keyed, "GET", delete, bob).status_code == 404
    assert call(keyed, "GET", delete, reader).status_code in (403, 404)
    assert call(keyed, "POST", "/v1/generation/stop", alice).status_code == 403
    assert call(keyed, "GET", "/v1/engines/clean_vram", alice).status_code == 403
    assert call(keyed, "GET", delete, alice).json() == {"message": "Deleted"}
    # Result files stay public, as Fooocus-API's /files.
    result = call(keyed, "POST", T2I, ADMIN, json=LIGHTNING).json()
    assert requests.get(result[0]["url"], timeout=10).status_code == 200


def test_webhook_gets_fooocus_api_body_signed(keyed: LiveServer) -> None:
    receiver = Receiver()
    try:
        body = {**LIGHTNING, "image_number": 2, "image_seed": 40, "webhook_url": receiver.url}
        response = call(keyed, "POST", T2I, ADMIN, json=body)
        assert response.status_code == 200, response.text
        results = response.json()
        job_id = query_job_id(response)
        deadline = time.monotonic() + 30
        while not receiver.received:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        headers, raw = receiver.received[0]
        assert verify(SECRET, headers, raw)
        delivered = json.loads(raw)
        assert delivered == {
            "job_id": job_id,
            "job_result": [{"url": item["url"], "seed": item["seed"]} for item in results],
        }
        assert [item["seed"] for item in delivered["job_result"]] == ["40", "41"]
    finally:
        receiver.close()


def query_job_id(response: requests.Response) -> str:
    return str(uuid.UUID(hex=response.headers["X-Task-Id"]))


def test_queue_full_is_409_in_every_mode(keyed: LiveServer) -> None:
    slow = {**SLOW, "image_number": 1, "async_process": True}
    blocker = call(keyed, "POST", T2I, ADMIN, json=slow)
    blocker_id = blocker.json()["job_id"]
    path = f"/v1/generation/query-job?job_id={blocker_id}"
    deadline = time.monotonic() + 120
    while call(keyed, "GET", path, ADMIN).json()["job_stage"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    waiting = call(keyed, "POST", T2I, ADMIN, json={**LIGHTNING, "async_process": True})
    assert waiting.status_code == 200  # fills the one-task queue
    sync = call(keyed, "POST", T2I, ADMIN, json=LIGHTNING)
    assert sync.status_code == 409
    assert sync.json() == [
        {"base64": None, "url": None, "seed": "", "finish_reason": "QUEUE_IS_FULL"}
    ]
    assert "Retry-After" in sync.headers
    job = call(keyed, "POST", T2I, ADMIN, json={**LIGHTNING, "async_process": True})
    assert job.status_code == 409
    assert job.json()["job_stage"] == "ERROR"
    assert job.json()["job_result"][0]["finish_reason"] == "QUEUE_IS_FULL"
    binary = call(keyed, "POST", T2I, ADMIN, json=LIGHTNING, headers={"Accept": "image/png"})
    assert binary.status_code == 409
    assert binary.text == "QUEUE_IS_FULL"
    call(keyed, "POST", "/v1/generation/stop", ADMIN)
    done = waiting.json()["job_id"]
    deadline = time.monotonic() + 120
    path = f"/v1/generation/query-job?job_id={done}"
    while call(keyed, "GET", path, ADMIN).json()["job_stage"] != "SUCCESS":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_v2_images_by_url(keyed: LiveServer) -> None:
    source = png_bytes((64, 48))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/source.png":
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(source)))
            self.end_headers()
            self.wfile.write(source)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/source.png"
        response = call(
            keyed,
            "POST",
            "/v2/generation/image-upscale-vary",
            ADMIN,
            json={**LIGHTNING, "input_image": url, "uov_method": "Vary (Subtle)"},
        )
        assert response.status_code == 200, response.text
        assert response.json()[0]["finish_reason"] == "SUCCESS"
        stored = call(keyed, "GET", f"/tasks/{response.headers['X-Task-Id']}", ADMIN).json()
        sha = stored["req_params"]["uov_input_image"].rsplit("/", 1)[1]
        with Image.open(keyed.inputs / sha) as kept, Image.open(io.BytesIO(source)) as sent:
            assert kept.convert("RGB").tobytes() == sent.convert("RGB").tobytes()
        missing = call(
            keyed,
            "POST",
            "/v2/generation/image-upscale-vary",
            ADMIN,
            json={**LIGHTNING, "input_image": f"{url[:-10]}nothing-here.png"},
        )
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "input_image"]
    finally:
        httpd.shutdown()
