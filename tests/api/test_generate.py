"""The generate endpoint end to end over real HTTP: modes, validation, inputs, outputs, files."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from engine.output.metadata import read_image_metadata
from tests.server import LiveServer, start_server

LIGHTNING = {"performance_selection": "Lightning"}


def generate(server: LiveServer, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/engine/generate/", json=body, timeout=120, **kwargs)


def png_base64(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def task_count(server: LiveServer) -> int:
    params: dict[str, str | int] = {"query": "all", "page_size": 100}
    body = requests.get(f"{server.url}/tasks", params=params, timeout=10).json()
    return sum(len(body[key]) for key in ("history", "current", "pending"))


def test_sync_json_mode_returns_the_finished_task(server: LiveServer) -> None:
    response = generate(
        server,
        {**LIGHTNING, "image_number": 2, "image_seed": 1234, "prompt": "a red fox"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    task = response.json()
    assert task["task_status"] == "finished"
    assert task["seeds"] == [1234, 1235]
    assert len(task["result"]) == 2
    assert task["req_params"]["prompt"] == "a red fox"
    assert task["req_params"]["image_seed"] == 1234
    assert task["start_mills"] >= task["in_queue_mills"]
    assert task["finish_mills"] >= task["start_mills"]
    assert response.headers["X-Task-Id"] == task["task_id"]
    for url in task["result"]:
        assert url.startswith(f"{server.url}/outputs/")
        relative = url.split("/outputs/", 1)[1]
        assert (server.outputs / relative).is_file()


def test_random_seed_is_resolved_and_recorded(server: LiveServer) -> None:
    task = generate(server, {**LIGHTNING, "image_seed": -1}, headers={"Accept": "application/json"})
    body = task.json()
    seed = body["req_params"]["image_seed"]
    assert 0 <= seed < 2**53
    assert body["seeds"] == [seed]


def test_same_seed_same_image_other_seed_other_image(server: LiveServer) -> None:
    def image_bytes(seed: int) -> bytes:
        response = generate(
            server, {**LIGHTNING, "image_seed": seed, "save_metadata_to_images": False}
        )
        assert response.status_code == 200
        return response.content

    assert image_bytes(7) == image_bytes(7)
    assert image_bytes(7) != image_bytes(8)


@pytest.mark.parametrize(
    ("output_format", "content_type", "pil_format"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_output_formats_and_metadata(
    server: LiveServer, output_format: str, content_type: str, pil_format: str
) -> None:
    task = generate(
        server,
        {**LIGHTNING, "output_format": output_format, "prompt": "metadata check"},
        headers={"Accept": "application/json"},
    ).json()
    assert task["result"][0].endswith(f".{output_format}")
    file = requests.get(task["result"][0], timeout=10)
    assert file.headers["Content-Type"] == content_type
    image = Image.open(io.BytesIO(file.content))
    assert image.format == pil_format
    if pil_format == "PNG":
        assert image.info["fooocus_scheme"] == "fooocus"
        assert json.loads(image.info["parameters"])["prompt"] == "metadata check"
    text, scheme = read_image_metadata(file.content)
    assert scheme == "fooocus"
    assert text is not None
    assert json.loads(text)["prompt"] == "metadata check"


def test_binary_mode_honours_accept_subtype(server: LiveServer) -> None:
    response = generate(server, {**LIGHTNING, "image_number": 3}, headers={"Accept": "image/jpeg"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    task = requests.get(f"{server.url}/tasks/{response.headers['X-Task-Id']}", timeout=10).json()
    assert task["req_params"]["image_number"] == 1


def test_save_name_and_require_base64(server: LiveServer) -> None:
    task = generate(
        server,
        {**LIGHTNING, "save_name": "client-42", "require_base64": True},
        headers={"Accept": "application/json"},
    ).json()
    assert task["result"][0].endswith("/client-42-0.png")
    data = base64.b64decode(task["result_base64"][0])
    assert data == requests.get(task["result"][0], timeout=10).content


def test_a_refused_request_stores_no_input_file(server: LiveServer) -> None:
    before = set(server.inputs.glob("*")) if server.inputs.exists() else set()
    response = generate(
        server,
        {
            **LIGHTNING,
            "async_process": True,
            "uov_method": "Vary (Subtle)",
            "uov_input_image": png_base64((10, 200, 30)),
            "style_selections": ["No Such Style"],
        },
    )
    # The engine refuses the unknown style by name before queueing: the image is not kept.
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "style_selections"]
    after = set(server.inputs.glob("*")) if server.inputs.exists() else set()
    assert after == before


def test_legacy_fooocus_api_fields_are_accepted(server: LiveServer) -> None:
    response = generate(
        server,
        {
            **LIGHTNING,
            "advanced_params": {"disable_seed_increment": True},
            "save_extension": "webp",
            "save_meta": False,
            "image_number": 2,
            "image_seed": 99,
        },
        headers={"Accept": "application/json"},
    )
    task = response.json()
    assert task["seeds"] == [99, 99]
    assert task["req_params"]["output_format"] == "webp"
    assert task["req_params"]["save_metadata_to_images"] is False
    assert task["result"][0].endswith(".webp")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_number": 0}, "image_number"),
        ({"image_number": "many"}, "image_number"),
        ({"guidance_scale": 31}, "guidance_scale"),
        ({"sharpness": -1}, "sharpness"),
        ({"performance_selection": "Turbo"}, "performance_selection"),
        ({"aspect_ratios_selection": "1000*abc"}, "aspect_ratios_selection"),
        ({"aspect_ratios_selection": "1001*1000"}, "aspect_ratios_selection"),
        ({"sampler_name": "nope"}, "sampler_name"),
        ({"scheduler_name": "nope"}, "scheduler_name"),
        ({"style_selections": ["No Such Style"]}, "style_selections"),
        ({"base_model_name": "missing.safetensors"}, "base_model_name"),
        ({"output_format": "gif"}, "output_format"),
        ({"save_name": "../escape"}, "save_name"),
        ({"save_name": "a/b"}, "save_name"),
        ({"webhook_url": "ftp://example.com"}, "webhook_url"),
        ({"overwrite_width": 65}, "overwrite_width"),
        ({"image_seed": -5}, "image_seed"),
        ({"uov_method": "Vary (Strong)"}, "uov_input_image"),
        ({"uov_method": "Upscale (2x)", "uov_input_image": "not base64 !!"}, "uov_input_image"),
        ({"inpaint_input_image": "data:image/png;base64,AAAA"}, "inpaint_input_image"),
        ({"preset": "no-such-preset"}, "preset"),
        ({"metadata_scheme": "a111"}, "metadata_scheme"),
        ({"controlnet_image": [{"cn_img": "", "cn_type": "Bogus"}]}, "controlnet_image"),
        (
            {
                "scheduler_name": "edm_playground_v2.5",
                "sampler_name": "tcd",
                "performance_selection": "Speed",
            },
            "sampler_name",
        ),
    ],
)
def test_bad_input_is_422_naming_the_field_and_queues_nothing(
    server: LiveServer, body: dict[str, Any], field: str
) -> None:
    before = task_count(server)
    response = generate(server, {**LIGHTNING, **body, "async_process": True})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(item["loc"][:2] == ["body", field] for item in detail), detail
    assert all(item["msg"] for item in detail)
    assert task_count(server) == before


def test_every_bad_field_is_reported_together(server: LiveServer) -> None:
    response = generate(server, {"image_number": 0, "sharpness": 99, "loras": [{"weight": 9}]})
    assert response.status_code == 422
    locs = [item["loc"] for item in response.json()["detail"]]
    assert ["body", "image_number"] in locs
    assert ["body", "sharpness"] in locs
    assert ["body", "loras", 0, "model_name"] in locs
    assert ["body", "loras", 0, "weight"] in locs


def test_invalid_json_is_422(server: LiveServer) -> None:
    response = requests.post(f"{server.url}/v1/engine/generate/", data=b"{not json", timeout=10)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_url_inputs_to_loopback_are_refused(server: LiveServer) -> None:
    response = generate(
        server,
        {
            **LIGHTNING,
            "uov_method": "Upscale (2x)",
            "uov_input_image": f"{server.url}/ping",
            "async_process": True,
        },
    )
    assert response.status_code == 422
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", "uov_input_image"]
    assert "non-public address" in item["msg"]


@pytest.mark.parametrize(
    "path",
    [
        "/outputs/../manage.py",
        "/outputs/2024-01-01/../../manage.py",
        "/outputs/db.sqlite3",
        "/outputs/..%2Fdb.sqlite3/x",
        "/outputs/2024-01-01/%2e%2e%2fdb.sqlite3",
        "/inputs/..%2F..%2Fmanage.py",
        "/inputs/../outputs/db.sqlite3",
        "/outputs/.secret_key",
    ],
)
def test_path_traversal_is_404(server: LiveServer, path: str) -> None:
    response = requests.get(f"{server.url}{path}", timeout=10)
    assert response.status_code == 404
    assert b"SECRET" not in response.content.upper() or response.status_code == 404


def test_unknown_task_is_404(server: LiveServer) -> None:
    assert requests.get(f"{server.url}/tasks/{'0' * 32}", timeout=10).status_code == 404


def test_engine_information_endpoints(server: LiveServer) -> None:
    models = requests.get(f"{server.url}/v1/engines/all-models", timeout=10).json()
    assert "fooocus_demo_tiny.safetensors" in models["model_filenames"]
    assert "demo_lightning_4step_lora.safetensors" in models["lora_filenames"]
    styles = requests.get(f"{server.url}/v1/engines/styles", timeout=10).json()
    assert "Fooocus Sharp" in styles
    presets = requests.get(f"{server.url}/v1/engines/presets", timeout=10).json()
    assert presets["default"] == "demo"
    assert {"default", "demo"} <= set(presets["presets"])
    opts = requests.get(f"{server.url}/v1/engines/options", timeout=10).json()
    assert len(opts["samplers"]) == 24
    assert len(opts["schedulers"]) == 11
    assert "64*64" in opts["aspect_ratios"]
    assert requests.get(f"{server.url}/ping", timeout=10).text == "pong"


def test_output_file_is_written_atomically_into_a_date_folder(server: LiveServer) -> None:
    task = generate(server, LIGHTNING, headers={"Accept": "application/json"}).json()
    relative = task["result"][0].split("/outputs/", 1)[1]
    day, name = relative.split("/")
    assert len(day) == 10
    assert name.startswith(day + "_")
    assert not list(Path(server.outputs / day).glob(".tmp-*"))


def test_same_seed_gives_the_same_bytes_across_a_server_restart(
    tmp_path: Path, demo_models: Path
) -> None:
    body = {
        "prompt": "a red fox in the snow",
        "performance_selection": "Speed",
        "overwrite_step": 6,
        "image_seed": 424242,
        "save_metadata_to_images": False,
    }

    def once(home: Path) -> bytes:
        live = start_server(home, demo_models)
        try:
            response = generate(live, body)
            assert response.status_code == 200
            return response.content
        finally:
            live.stop()

    assert once(tmp_path / "first") == once(tmp_path / "second")
