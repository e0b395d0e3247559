"""describe-image and generate_mask over real HTTP on the demo preset: queued tasks answered
synchronously, asynchronously or as a stream; bad input refused with nothing queued; a queued
tool task cancelled."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from engine.tools.types import REMBG_MODELS
from tests.server import LiveServer, wait_for_task

SLOW = {
    "performance_selection": "Speed",
    "sampler_name": "euler",
    "overwrite_step": 200,
    "image_number": 2,
    "async_process": True,
}


def _png(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(server: LiveServer, route: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/tools/{route}", json=body, timeout=120, **kwargs)


def _task_count(server: LiveServer) -> int:
    body = requests.get(f"{server.url}/tasks", params={"page_size": 1}, timeout=10).json()
    return int(body.get("history_total", body.get("total", 0)) or len(body.get("history", [])))


@pytest.mark.parametrize("image_type", ["Photo", "Anime"])
def test_describe_sync_answers_the_text(server: LiveServer, image_type: str) -> None:
    response = _post(server, "describe-image", {"image": _b64(_png()), "image_type": image_type})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["describe"]
    assert isinstance(body["describe"], str)
    task = requests.get(f"{server.url}/tasks/{response.headers['X-Task-Id']}", timeout=10).json()
    assert task["task_kind"] == "describe"
    assert task["task_status"] == "finished"
    assert task["describe"] == body["describe"]
    assert task["req_params"]["image_type"] == image_type
    # The input is stored by hash and served back.
    stored = requests.get(task["req_params"]["image"], timeout=10)
    assert stored.status_code == 200
    assert Image.open(io.BytesIO(stored.content)).size == (48, 40)


def test_describe_is_deterministic_and_accepts_the_old_multipart_form(server: LiveServer) -> None:
    image = _png(seed=4)
    first = _post(server, "describe-image", {"image": _b64(image), "image_type": "Anime"}).json()
    form = requests.post(
        f"{server.url}/v1/tools/describe-image",
        params={"image_type": "Anime"},
        files={"image": ("x.png", image, "image/png")},
        timeout=120,
    )
    assert form.status_code == 200, form.text
    assert form.json() == first


def test_describe_async_then_poll(server: LiveServer) -> None:
    response = _post(server, "describe-image", {"image": _b64(_png()), "async_process": True})
    assert response.status_code == 200
    created = response.json()
    assert created["task_status"] in ("pending", "running")
    ended = wait_for_task(server, created["task_id"])
    assert ended["task_status"] == "finished"
    assert isinstance(ended["describe"], str)


def test_describe_stream_ends_with_the_text(server: LiveServer) -> None:
    with requests.post(
        f"{server.url}/v1/tools/describe-image",
        json={"image": _b64(_png()), "image_type": "Photo", "stream_output": True},
        stream=True,
        timeout=120,
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [
            json.loads(line[6:])
            for line in response.iter_lines(decode_unicode=True)
            if line.startswith("data: ")
        ]
    assert events[0]["message"] == "Waiting in queue ..."
    assert any(e["message"].startswith("Describing the image") for e in events)
    assert events[-1]["task_status"] == "finished"
    assert isinstance(events[-1]["describe"], str)


@pytest.mark.parametrize("mask_model", REMBG_MODELS)
def test_generate_mask_each_background_model(server: LiveServer, mask_model: str) -> None:
    body = {"image": _b64(_png()), "mask_model": mask_model, "cloth_category": "upper"}
    response = _post(server, "generate_mask", body)
    assert response.status_code == 200, response.text
    mask = Image.open(io.BytesIO(base64.b64decode(response.json())))
    assert mask.size == (48, 40)
    assert mask.mode == "L"
    task = requests.get(f"{server.url}/tasks/{response.headers['X-Task-Id']}", timeout=10).json()
    assert task["task_kind"] == "mask"
    assert len(task["result"]) == 1
    # The recorded output file is the answered mask.
    assert requests.get(task["result"][0], timeout=10).content == base64.b64decode(response.json())


def test_generate_mask_sam_with_a_prompt_and_debug_boxes(server: LiveServer) -> None:
    body = {
        "image": _b64(_png()),
        "mask_model": "sam",
        "dino_prompt_text": "cat",
        "box_threshold": 0.0,
        "sam_max_detections": 2,
    }
    mask = Image.open(io.BytesIO(base64.b64decode(_post(server, "generate_mask", body).json())))
    assert mask.mode == "RGB"
    assert mask.size == (48, 40)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    boxes = _post(server, "generate_mask", {**body, "dino_debug": True})
    assert boxes.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(boxes.json())))).any()
    none = _post(server, "generate_mask", {**body, "box_threshold": 1.0})
    assert not np.asarray(Image.open(io.BytesIO(base64.b64decode(none.json())))).any()


def test_generate_mask_async_and_stream(server: LiveServer) -> None:
    body = {"image": _b64(_png()), "mask_model": "u2netp"}
    created = _post(server, "generate_mask", {**body, "async_process": True}).json()
    ended = wait_for_task(server, created["task_id"])
    assert ended["task_status"] == "finished"
    assert ended["result"][0].endswith(".png")
    with requests.post(
        f"{server.url}/v1/tools/generate_mask",
        json={**body, "stream_output": True},
        stream=True,
        timeout=120,
    ) as response:
        lines = [
            line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")
        ]
    last = json.loads(lines[-1][6:])
    assert last["task_status"] == "finished"
    assert last["images"][0].endswith(".png")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("describe-image", {"image": "bm90IGFuIGltYWdl"}, "image"),
        ("describe-image", {}, "image"),
        ("describe-image", {"image": "PNG", "image_type": "Cartoon"}, "image_type"),
        ("generate_mask", {"mask_model": "u3net"}, "mask_model"),
        ("generate_mask", {"mask_model": "sam", "sam_model": "vit_x"}, "sam_model"),
        ("generate_mask", {"box_threshold": 1.5}, "box_threshold"),
        ("generate_mask", {"text_threshold": -0.5}, "text_threshold"),
        ("generate_mask", {"sam_max_detections": 11}, "sam_max_detections"),
        ("generate_mask", {"dino_erode_or_dilate": 65}, "dino_erode_or_dilate"),
        ("generate_mask", {"cloth_category": "hat"}, "cloth_category"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    server: LiveServer, route: str, body: dict[str, Any], field: str
) -> None:
    if body.get("image") == "PNG" or ("image" not in body and route == "generate_mask"):
        body = {**body, "image": _b64(_png())}
    before = requests.get(f"{server.url}/tasks", timeout=10).json()
    response = _post(server, route, body)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])
    after = requests.get(f"{server.url}/tasks", timeout=10).json()
    assert _ids(after) == _ids(before)  # nothing queued


def _ids(listing: dict[str, Any]) -> set[str]:
    tasks = [*listing.get("history", []), *listing.get("current", []), *listing.get("pending", [])]
    return {t["task_id"] for t in tasks}


def test_oversized_image_is_refused(server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4100, 4100), (9, 9, 9)).save(buffer, "PNG")  # over 4096*4096 pixels
    for route in ("generate_mask", "describe-image"):
        response = _post(server, route, {"image": _b64(buffer.getvalue())})
        assert response.status_code == 422, response.text
        assert "pixels" in json.dumps(response.json()["detail"])


def test_a_queued_tool_task_can_be_cancelled(server: LiveServer) -> None:
    busy = requests.post(f"{server.url}/v1/engine/generate/", json=SLOW, timeout=60).json()
    queued = _post(
        server,
        "generate_mask",
        {"image": _b64(_png()), "mask_model": "u2net", "async_process": True},
    ).json()
    assert queued["task_status"] == "pending"
    cancel = requests.post(f"{server.url}/tasks/{queued['task_id']}/cancel", timeout=10)
    assert cancel.status_code == 200, cancel.text
    assert wait_for_task(server, queued["task_id"])["task_status"] == "canceled"
    requests.post(f"{server.url}/tasks/{busy['task_id']}/cancel", timeout=10)
    assert wait_for_task(server, busy["task_id"])["task_status"] in ("canceled", "stop")
    time.sleep(0.1)
