"""Image inputs through the API on the demo preset: every method end to end, inputs stored."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import pytest
import requests
from PIL import Image

from tests.server import LiveServer, wait_for_task

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


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mask_png(box: tuple[int, int, int, int] | None) -> str:
    mask = Image.new("L", (64, 64), 0)
    if box is not None:
        mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return b64(buffer.getvalue())


METHODS: dict[str, dict[str, Any]] = {
    "vary": {"uov_method": "Vary (Strong)", "uov_input_image": b64(png_bytes())},
    "upscale-custom": {
        "uov_method": "Upscale (Custom)",
        "upscale_multiple": 1.2,
        "uov_input_image": b64(png_bytes((64, 64))),
    },
    "inpaint-v2.6": {
        "inpaint_input_image": b64(png_bytes((64, 64))),
        "inpaint_mask_image_upload": mask_png((16, 16, 48, 48)),
    },
    "outpaint": {
        "inpaint_input_image": b64(png_bytes((64, 64))),
        "outpaint_selections": ["Left", "Bottom"],
        "outpaint_distance": [16, 0, 0, 8],
    },
    "image-prompt": {"controlnet_image": [{"cn_img": b64(png_bytes()), "cn_type": "ImagePrompt"}]},
    "face-swap": {"controlnet_image": [{"cn_img": b64(png_bytes()), "cn_type": "FaceSwap"}]},
    "cpds": {"controlnet_image": [{"cn_img": b64(png_bytes()), "cn_type": "CPDS"}]},
}


def _stored_inputs(params: dict[str, Any]) -> list[str]:
    urls = [params.get(key) for key in ("uov_input_image", "inpaint_input_image")]
    urls += [slot["cn_img"] for slot in params.get("controlnet_image", [])]
    return [url for url in urls if url]


@pytest.mark.parametrize("mode", ["async", "stream"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_in_async_and_streaming_mode(
    server: LiveServer, method: str, mode: str
) -> None:
    body = {**LIGHTNING, **METHODS[method]}
    if mode == "async":
        submitted = requests.post(
            f"{server.url}/v1/engine/generate/", json={**body, "async_process": True}, timeout=60
        )
        assert submitted.status_code == 200, submitted.text
        task = wait_for_task(server, submitted.json()["task_id"], timeout=300)
    else:
        with requests.post(
            f"{server.url}/v1/engine/generate/",
            json={**body, "stream_output": True},
            stream=True,
            timeout=300,
        ) as response:
            assert response.status_code == 200, response.text
            events = [
                json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: ")
            ]
        assert events[-1]["task_status"] == "finished", events[-1]
        assert len(events[-1]["images"]) == 1
        task = requests.get(f"{server.url}/tasks/{events[-1]['task_id']}", timeout=10).json()
    assert task["task_status"] == "finished", task["error"]
    assert len(task["result"]) == 1
    stored = _stored_inputs(task["req_params"])
    assert stored
    for url in stored:
        name = url.rsplit("/", 1)[1]
        assert (server.inputs / name).is_file()
        assert requests.get(url, timeout=10).status_code == 200


def test_outpaint_grows_by_the_asked_distances(server: LiveServer) -> None:
    response = generate(server, {**LIGHTNING, **METHODS["outpaint"]})
    task = response.json()
    image = Image.open(io.BytesIO(requests.get(task["result"][0], timeout=10).content))
    assert image.size == (64 + 16, 64 + 8)


def test_an_empty_mask_without_outpaint_is_422_before_queueing(server: LiveServer) -> None:
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        json={
            **LIGHTNING,
            "async_process": True,
            "inpaint_input_image": b64(png_bytes((64, 64))),
            "inpaint_mask_image_upload": mask_png(None),
        },
        timeout=60,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "inpaint_mask_image_upload"]
