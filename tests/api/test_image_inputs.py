"""Image inputs through the API on the demo preset: Vary and Upscale end to end, inputs stored."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import pytest
import requests
from PIL import Image

from tests.server import LiveServer

LIGHTNING = {"performance_selection": "Lightning"}
JSON = {"Accept": "application/json"}


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata([(x * 4 % 256, y * 5 % 256, 80) for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generate(server: LiveServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/v1/engine/generate/", json=body, headers=JSON, timeout=180)


@pytest.mark.parametrize(
    ("method", "size"),
    [("Vary (Subtle)", (72, 56)), ("Upscale (2x)", (128, 96)), ("Upscale (Fast 2x)", (128, 96))],
)
def test_uov_request_finishes_and_keeps_its_input(
    server: LiveServer, method: str, size: tuple[int, int]
) -> None:
    data = png_bytes()
    response = generate(
        server,
        {**LIGHTNING, "uov_method": method, "uov_input_image": base64.b64encode(data).decode()},
    )
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["task_status"] == "finished"
    assert len(task["result"]) == 1
    image = Image.open(io.BytesIO(requests.get(task["result"][0], timeout=10).content))
    assert image.size == size
    stored = task["req_params"]["uov_input_image"]
    assert stored.endswith(".png")
    assert "/inputs/" in stored
    sha = stored.rsplit("/", 1)[1].removesuffix(".png")
    path = server.inputs / f"{sha}.png"
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_inpaint_request_keeps_unmasked_pixels(server: LiveServer) -> None:
    data = png_bytes((64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    response = generate(
        server,
        {
            **LIGHTNING,
            "inpaint_input_image": base64.b64encode(data).decode(),
            "inpaint_mask_image_upload": base64.b64encode(buffer.getvalue()).decode(),
            "inpaint_engine": "None",
        },
    )
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["task_status"] == "finished"
    out = Image.open(io.BytesIO(requests.get(task["result"][0], timeout=10).content))
    original = Image.open(io.BytesIO(data))
    assert out.size == (64, 64)
    assert out.convert("RGB").getpixel((0, 0)) == original.convert("RGB").getpixel((0, 0))
    assert "/inputs/" in task["req_params"]["inpaint_input_image"]


def test_pyracanny_image_prompt_request_finishes(server: LiveServer) -> None:
    data = png_bytes((64, 64))
    slot = {"cn_img": base64.b64encode(data).decode(), "cn_type": "PyraCanny"}
    response = generate(server, {**LIGHTNING, "controlnet_image": [slot]})
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["task_status"] == "finished"
    image = Image.open(io.BytesIO(requests.get(task["result"][0], timeout=10).content))
    assert image.size == (64, 64)
    assert "/inputs/" in task["req_params"]["controlnet_image"][0]["cn_img"]
