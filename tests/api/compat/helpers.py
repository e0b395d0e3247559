"""Shared helpers of the Fooocus-API route tests."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import requests
from PIL import Image

from tests.server import LiveServer

LIGHTNING = {"performance_selection": "Lightning"}
# Long enough to act on a job while it runs (one worker, demo models on a CPU).
SLOW = {"performance_selection": "Speed", "sampler_name": "euler", "overwrite_step": 200}
ENDED_STAGES = ("SUCCESS", "ERROR")


def png_bytes(size: tuple[int, int] = (64, 48), tint: int = 80) -> bytes:
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 4 % 256, y * 5 % 256, tint) for y in range(size[1]) for x in range(size[0])]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    """White (repaint) left half, black right half."""
    image = Image.new("L", size, 0)
    image.paste(255, (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post_json(server: LiveServer, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=180, **kwargs)


def post_form(
    server: LiveServer,
    path: str,
    data: dict[str, Any],
    files: dict[str, bytes],
    **kwargs: Any,
) -> requests.Response:
    parts = {name: (f"{name}.png", content, "image/png") for name, content in files.items()}
    return requests.post(f"{server.url}{path}", data=data, files=parts, timeout=180, **kwargs)


def query_job(server: LiveServer, job_id: str, **params: Any) -> requests.Response:
    return requests.get(
        f"{server.url}/v1/generation/query-job",
        params={"job_id": job_id, **params},
        timeout=10,
    )


def wait_job(server: LiveServer, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = query_job(server, job_id).json()
        if body["job_stage"] in ENDED_STAGES:
            return dict(body)
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not end:\n{server.log()[-4000:]}")


def wait_running(server: LiveServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = query_job(server, job_id, require_step_preview=True).json()
        if body["job_stage"] == "RUNNING" and body["job_progress"] > 1:
            return dict(body)
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never ran")


def task_of(server: LiveServer, job_id: str) -> dict[str, Any]:
    """The same job as a task object of ``/tasks`` (job ids are the task ids, dashed)."""
    response = requests.get(f"{server.url}/tasks/{job_id.replace('-', '')}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def task_count(server: LiveServer) -> int:
    body = requests.get(f"{server.url}/tasks", params={"page_size": 100}, timeout=10).json()
    return sum(len(body[key]) for key in ("history", "current", "pending"))


def reference_image(server: LiveServer, body: dict[str, Any]) -> bytes:
    """The same request through FooocusAPI's generate route, as PNG bytes."""
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        json={**body, "save_metadata_to_images": False},
        headers={"Accept": "image/png"},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    return response.content
