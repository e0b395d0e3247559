"""Generate with enhance over real HTTP on the demo preset: regions, Vary/Upscale before and
after, debugging masks, final-only; sync, async and stream; bad enhance input refused."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.server import LiveServer, wait_for_task

FAST = {"performance_selection": "Lightning", "image_seed": 11, "aspect_ratios_selection": "64*64"}


def _image_b64() -> str:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[20:44, 20:44] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _ctrl(**changes: Any) -> dict[str, Any]:
    return {
        "enhance_enabled": True,
        "enhance_mask_model": "u2net",
        "enhance_mask_invert": True,
        **changes,
    }


def _generate(server: LiveServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/engine/generate/",
        json={**FAST, **body},
        headers={"Accept": "application/json"},
        timeout=300,
    )


def _sizes(task: dict[str, Any]) -> list[tuple[int, int]]:
    return [
        Image.open(io.BytesIO(requests.get(u, timeout=10).content)).size for u in task["result"]
    ]


@pytest.mark.parametrize("regions", [1, 2, 3])
def test_enhance_an_uploaded_image_sync(server: LiveServer, regions: int) -> None:
    body = {
        "enhance_checkbox": True,
        "enhance_input_image": _image_b64(),
        "enhance_ctrls": [_ctrl(enhance_prompt=f"region {i}") for i in range(regions)],
    }
    response = _generate(server, body)
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["task_status"] == "finished", task
    assert len(task["result"]) == regions
    assert task["req_params"]["enhance_input_image"].split("?")[0].endswith(".png")


def test_enhance_debug_masks_and_uov_before(server: LiveServer) -> None:
    body = {
        "enhance_checkbox": True,
        "enhance_input_image": _image_b64(),
        "enhance_uov_method": "Upscale (Fast 2x)",
        "enhance_uov_processing_order": "Before First Enhancement",
        "debugging_enhance_masks_checkbox": True,
        "enhance_ctrls": [_ctrl()],
    }
    task = _generate(server, body).json()
    assert task["task_status"] == "finished", task
    # upscaled image, the region's mask, the inpainted image
    assert _sizes(task) == [(128, 128), (128, 128), (128, 128)]


def test_enhance_generated_images_uov_after_async(server: LiveServer) -> None:
    body = {
        "image_number": 2,
        "enhance_checkbox": True,
        "enhance_uov_method": "Upscale (Fast 2x)",
        "enhance_uov_processing_order": "After Last Enhancement",
        "enhance_uov_prompt_type": "Last Filled Enhancement Prompts",
        "save_final_enhanced_image_only": True,
        "enhance_ctrls": [_ctrl(enhance_prompt="a cat")],
        "async_process": True,
    }
    created = _generate(server, body).json()
    task = wait_for_task(server, created["task_id"], timeout=300)
    assert task["task_status"] == "finished", task
    assert _sizes(task) == [(128, 128), (128, 128)]  # only the two final images


def test_enhance_stream_reports_the_enhancements(server: LiveServer) -> None:
    body = {
        "enhance_checkbox": True,
        "enhance_input_image": _image_b64(),
        "enhance_ctrls": [_ctrl(), _ctrl(enhance_mask_model="silueta")],
        "stream_output": True,
    }
    with requests.post(
        f"{server.url}/v1/engine/generate/", json={**FAST, **body}, stream=True, timeout=300
    ) as response:
        events = [
            json.loads(line[6:])
            for line in response.iter_lines(decode_unicode=True)
            if line.startswith("data: ")
        ]
    messages = [e["message"] for e in events]
    assert "Preparing enhancement 1/2 ..." in messages
    assert "Preparing enhancement 2/2 ..." in messages
    assert events[-1]["task_status"] == "finished"
    assert len(events[-1]["images"]) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enhance_checkbox": True}, "enhance_ctrls"),
        (
            {"enhance_checkbox": True, "enhance_ctrls": [{"enhance_enabled": False}]},
            "enhance_ctrls",
        ),
        ({"enhance_input_image": "IMAGE"}, "enhance_checkbox"),
        (
            {"enhance_checkbox": True, "enhance_ctrls": [_ctrl(enhance_mask_model="u3net")]},
            "enhance_mask_model",
        ),
        (
            {"enhance_checkbox": True, "enhance_ctrls": [_ctrl(enhance_mask_sam_model="vit_q")]},
            "enhance_mask_sam_model",
        ),
        (
            {"enhance_checkbox": True, "enhance_ctrls": [_ctrl(enhance_mask_box_threshold=2)]},
            "enhance_mask_box_threshold",
        ),
        ({"enhance_checkbox": True, "enhance_ctrls": [_ctrl()] * 4}, "enhance_ctrls"),
        (
            {
                "enhance_checkbox": True,
                "enhance_uov_method": "Vary (Strong)",
                "enhance_uov_processing_order": "Later",
            },
            "enhance_uov_processing_order",
        ),
        (
            {
                "enhance_checkbox": True,
                "enhance_input_image": "bm90IGFuIGltYWdl",
                "enhance_ctrls": [_ctrl()],
            },
            "enhance_input_image",
        ),
    ],
)
def test_bad_enhance_input_is_a_422(server: LiveServer, body: dict[str, Any], field: str) -> None:
    if body.get("enhance_input_image") == "IMAGE":
        body = {**body, "enhance_input_image": _image_b64()}
    before = requests.get(f"{server.url}/tasks", timeout=10).json()
    response = _generate(server, body)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])
    assert requests.get(f"{server.url}/tasks", timeout=10).json() == before
