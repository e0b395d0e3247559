"""FooocusAPI (v2) semantics over real HTTP: stream beats async, control with or without slash,
files converted to the image type asked for, bodies that are not objects, unimplemented fields."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import requests
from PIL import Image

from tests.server import LiveServer

LIGHTNING = {"performance_selection": "Lightning"}
# Enough steps that the stream carries several progress events with previews.
STEPPED = {"performance_selection": "Speed", "overwrite_step": 6, "sampler_name": "euler"}
GENERATE = "/v1/engine/generate/"


def task_count(server: LiveServer) -> int:
    body = requests.get(f"{server.url}/tasks", params={"page_size": 100}, timeout=10).json()
    return sum(len(body[key]) for key in ("history", "current", "pending"))


def stream_events(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: ")]


def test_stream_output_wins_over_async_process_and_sends_every_event(server: LiveServer) -> None:
    # FooocusAPI's own example page sends both flags.
    response = requests.post(
        f"{server.url}{GENERATE}",
        json={**STEPPED, "prompt": "a cat", "async_process": True, "stream_output": True},
        stream=True,
        timeout=120,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = stream_events(response)
    sampling = [e for e in events if e["message"].startswith("Sampling step")]
    assert len(sampling) >= 6, [e["message"] for e in events]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert any(e["preview"] and e["preview"].startswith("data:image/") for e in events)
    assert events[-1]["message"] == "Finished"
    assert events[-1]["progress"] == 100
    assert len(events[-1]["images"]) == 1


@pytest.mark.parametrize("path", ["/v1/engine/control", "/v1/engine/control/"])
def test_engine_control_answers_with_and_without_trailing_slash(
    server: LiveServer, path: str
) -> None:
    response = requests.post(f"{server.url}{path}?action=skip", timeout=10, allow_redirects=False)
    assert response.status_code == 200
    assert response.json()["action"] == "skip"


@pytest.fixture(scope="module")
def stored_png(server: LiveServer) -> str:
    task = requests.post(
        f"{server.url}{GENERATE}",
        json={**LIGHTNING, "output_format": "png"},
        headers={"Accept": "application/json"},
        timeout=120,
    ).json()
    return str(task["result"][0])


@pytest.mark.parametrize(
    ("accept", "content_type", "pil_format"),
    [
        ("image/jpeg", "image/jpeg", "JPEG"),
        ("image/jpg", "image/jpeg", "JPEG"),
        ("image/webp", "image/webp", "WEBP"),
        ("image/png", "image/png", "PNG"),
    ],
)
def test_outputs_convert_to_the_accepted_image_type(
    stored_png: str, accept: str, content_type: str, pil_format: str
) -> None:
    original = Image.open(io.BytesIO(requests.get(stored_png, timeout=10).content))
    response = requests.get(stored_png, headers={"Accept": accept}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert "Accept" in response.headers["Vary"]
    converted = Image.open(io.BytesIO(response.content))
    assert converted.format == pil_format
    assert converted.size == original.size


def test_a_browser_accept_list_gets_the_stored_file(stored_png: str) -> None:
    stored = requests.get(stored_png, timeout=10).content
    browser = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
    response = requests.get(stored_png, headers={"Accept": browser}, timeout=10)
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == stored


def test_inputs_convert_to_the_accepted_image_type(server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 90)).save(buffer, format="PNG")
    task = requests.post(
        f"{server.url}{GENERATE}",
        json={
            **LIGHTNING,
            "async_process": True,
            "uov_method": "Vary (Subtle)",
            "uov_input_image": base64.b64encode(buffer.getvalue()).decode(),
        },
        timeout=60,
    ).json()
    url = task["req_params"]["uov_input_image"]
    assert "/inputs/" in url
    response = requests.get(url, headers={"Accept": "image/jpeg"}, timeout=10)
    assert response.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    assert image.size == (64, 48)
    # Lossy, but still the same colour (an independent check of the conversion).
    red, green, blue = image.convert("RGB").getpixel((32, 24))  # type: ignore[misc]
    assert abs(red - 30) < 8
    assert abs(green - 160) < 8
    assert abs(blue - 90) < 8


@pytest.mark.parametrize("body", [b"", b"   ", b"[]", b"42", b'"text"', b"null"])
def test_a_body_that_is_not_a_json_object_is_422_and_queues_nothing(
    server: LiveServer, body: bytes
) -> None:
    before = task_count(server)
    response = requests.post(
        f"{server.url}{GENERATE}",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert task_count(server) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Enhance's fields are implemented (tests/api/tools); this one is not yet.
        ("inpaint_advanced_masking_checkbox", True),
    ],
)
def test_unimplemented_fields_set_are_422_naming_the_field(
    server: LiveServer, field: str, value: Any
) -> None:
    before = task_count(server)
    response = requests.post(
        f"{server.url}{GENERATE}",
        json={**LIGHTNING, "async_process": True, field: value},
        timeout=10,
    )
    assert response.status_code == 422, response.text
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", field]
    assert "not implemented" in item["msg"]
    assert task_count(server) == before


def test_unimplemented_fields_at_their_defaults_and_unknown_fields_are_accepted(
    server: LiveServer,
) -> None:
    # What a client that dumps FooocusAPI's whole request model sends.
    defaults = {
        "enhance_checkbox": False,
        "enhance_input_image": "None",
        "enhance_uov_method": "Disabled",
        "enhance_uov_processing_order": "Before First Enhancement",
        "enhance_uov_prompt_type": "Original Prompts",
        "enhance_ctrls": [{"enhance_enabled": False, "enhance_prompt": "ignored"}],
        "save_final_enhanced_image_only": False,
        "debugging_enhance_masks_checkbox": False,
        "inpaint_advanced_masking_checkbox": False,
        "debugging_dino": False,
        "dino_erode_or_dilate": 0,
        "no_such_field_anywhere": {"x": 1},
    }
    response = requests.post(
        f"{server.url}{GENERATE}",
        json={**LIGHTNING, **defaults},
        headers={"Accept": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["task_status"] == "finished"
