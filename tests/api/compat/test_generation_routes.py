"""Fooocus-API's generation routes over real HTTP: v1 JSON and multipart forms, v2 JSON, their
result modes and response shapes, and the mapping of their fields onto the same engine request
(checked by comparing image bytes with the equivalent FooocusAPI request at the same seed)."""

from __future__ import annotations

import base64
import io
import json
import uuid

import pytest
import requests
from PIL import Image

from tests.api.compat.helpers import (
    LIGHTNING,
    b64,
    mask_bytes,
    png_bytes,
    post_form,
    post_json,
    reference_image,
    task_count,
    task_of,
    wait_job,
)
from tests.server import LiveServer

NO_META = {"save_meta": False}
PNG = {"Accept": "image/png"}


def test_v1_text_to_image_answers_the_result_list(server: LiveServer) -> None:
    response = post_json(
        server,
        "/v1/generation/text-to-image",
        {
            **LIGHTNING,
            "prompt": "a red fox",
            "image_number": 2,
            "image_seed": 100,
            "require_base64": True,
            "save_extension": "jpg",
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert [sorted(item) for item in results] == [["base64", "finish_reason", "seed", "url"]] * 2
    assert [item["seed"] for item in results] == ["100", "101"]
    assert {item["finish_reason"] for item in results} == {"SUCCESS"}
    for item in results:
        assert item["url"].startswith(f"{server.url}/files/")
        assert item["url"].endswith(".jpeg")
        served = requests.get(item["url"], timeout=10)
        assert served.headers["Content-Type"] == "image/jpeg"
        prefix, _, data = item["base64"].partition(",")
        assert prefix == "data:image/jpeg;base64"
        assert base64.b64decode(data) == served.content
    # The job is a task like any other: job_id is the task id with dashes.
    task = task_of(server, response.headers["X-Task-Id"])
    assert task["task_status"] == "finished"
    assert task["req_params"]["output_format"] == "jpeg"
    assert task["req_params"]["fooocus_api"] == {
        "route": "/v1/generation/text-to-image",
        "job_type": "Text to Image",
    }
    # /files and /outputs serve the same file.
    relative = results[0]["url"].split("/files/", 1)[1]
    assert requests.get(f"{server.url}/outputs/{relative}", timeout=10).content == (
        requests.get(results[0]["url"], timeout=10).content
    )


def test_v1_advanced_params_and_renamed_fields_reach_the_request(server: LiveServer) -> None:
    response = post_json(
        server,
        "/v1/generation/text-to-image",
        {
            **LIGHTNING,
            "async_process": True,
            "save_meta": False,
            "meta_scheme": "a1111",
            "save_extension": "webp",
            "save_name": "",
            "advanced_params": {
                "sampler_name": "euler",
                "scheduler_name": "normal",
                "adm_scaler_positive": 1.2,
                "overwrite_step": 3,
                # Fooocus-API's defaults of fields this server has no counterpart for.
                "inpaint_advanced_masking_checkbox": True,
                "debugging_dino": False,
            },
        },
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert sorted(job) == sorted(
        [
            "job_id",
            "job_type",
            "job_stage",
            "job_progress",
            "job_status",
            "job_step_preview",
            "job_result",
        ]
    )
    assert job["job_stage"] == "WAITING"
    assert job["job_type"] == "Text to Image"
    assert str(uuid.UUID(job["job_id"])) == job["job_id"]  # dashed, as Fooocus-API's
    ended = wait_job(server, job["job_id"])
    assert ended["job_stage"] == "SUCCESS"
    assert ended["job_progress"] == 100
    assert ended["job_status"] == "Finished"
    assert ended["job_result"][0]["url"].endswith(".webp")
    params = task_of(server, job["job_id"])["req_params"]
    assert params["sampler_name"] == "euler"
    assert params["scheduler_name"] == "normal"
    assert params["adm_scaler_positive"] == 1.2
    assert params["overwrite_step"] == 3
    assert params["save_metadata_to_images"] is False
    assert params["metadata_scheme"] == "a1111"
    assert params["output_format"] == "webp"
    # Fooocus-API's own default where it differs from FooocusAPI's.
    assert params["inpaint_respective_field"] == 1.0


def test_accept_image_png_and_the_accept_query_override(server: LiveServer) -> None:
    body = {**LIGHTNING, **NO_META, "image_seed": 77, "image_number": 3}
    by_header = post_json(server, "/v1/generation/text-to-image", body, headers=PNG)
    assert by_header.status_code == 200
    assert by_header.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(by_header.content)).format == "PNG"
    assert task_of(server, by_header.headers["X-Task-Id"])["req_params"]["image_number"] == 1
    by_query = post_json(
        server,
        "/v1/generation/text-to-image?accept=image/png",
        body,
        headers={"Accept": "application/json"},
    )
    assert by_query.headers["Content-Type"] == "image/png"
    assert by_query.content == by_header.content
    # The same request through FooocusAPI's route: the same engine request, the same image.
    assert reference_image(server, {**LIGHTNING, "image_seed": 77}) == by_header.content


def test_v1_upscale_vary_multipart(server: LiveServer) -> None:
    source = png_bytes((64, 48))
    form = {
        "uov_method": "Upscale (Custom)",
        "upscale_value": "1.5",
        "image_seed": "5",
        "performance_selection": "Lightning",
        "style_selections": "Fooocus V2,Fooocus Sharp",
        "loras": json.dumps([{"model_name": "None", "weight": 0.5}]),
        "save_meta": "false",
        "advanced_params": json.dumps({"overwrite_upscale_strength": 0.4}),
    }
    response = post_form(
        server, "/v1/generation/image-upscale-vary", form, {"input_image": source}, headers=PNG
    )
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (96, 72)
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    assert params["uov_method"] == "Upscale (Custom)"
    assert params["upscale_multiple"] == 1.5
    assert params["style_selections"] == ["Fooocus V2", "Fooocus Sharp"]
    assert "/inputs/" in params["uov_input_image"]
    assert params["fooocus_api"]["job_type"] == "Image Upscale or Variation"
    expected = reference_image(
        server,
        {
            **LIGHTNING,
            "image_seed": 5,
            "uov_method": "Upscale (Custom)",
            "upscale_multiple": 1.5,
            "uov_input_image": b64(source),
            "style_selections": ["Fooocus V2", "Fooocus Sharp"],
            "loras": [{"model_name": "None", "weight": 0.5}],
            "overwrite_upscale_strength": 0.4,
            "inpaint_respective_field": 1.0,
        },
    )
    assert response.content == expected


def test_v1_inpaint_outpaint_multipart_with_mask_and_distances(server: LiveServer) -> None:
    source = png_bytes((64, 64))
    form = {
        **{key: str(value) for key, value in LIGHTNING.items()},
        "image_seed": "9",
        "outpaint_selections": "Left,Top",
        "outpaint_distance_left": "16",
        "outpaint_distance_top": "8",
        "inpaint_additional_prompt": "a window",
        "save_meta": "false",
    }
    response = post_form(
        server,
        "/v1/generation/image-inpaint-outpaint",
        form,
        {"input_image": source, "input_mask": mask_bytes((64, 64))},
        headers=PNG,
    )
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (64 + 16, 64 + 8)
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    assert params["outpaint_selections"] == ["Left", "Top"]
    assert params["outpaint_distance"] == [16, 8, 0, 0]
    assert "/inputs/" in params["inpaint_mask_image_upload"]
    assert params["inpaint_respective_field"] == 1.0
    expected = reference_image(
        server,
        {
            **LIGHTNING,
            "image_seed": 9,
            "inpaint_input_image": b64(source),
            "inpaint_mask_image_upload": b64(mask_bytes((64, 64))),
            "outpaint_selections": ["Left", "Top"],
            "outpaint_distance": [16, 8, 0, 0],
            "inpaint_additional_prompt": "a window",
            "inpaint_respective_field": 1.0,
        },
    )
    assert response.content == expected


def test_v1_image_prompt_multipart_slots(server: LiveServer) -> None:
    prompt_image = png_bytes((64, 64), tint=200)
    form = {
        **{key: str(value) for key, value in LIGHTNING.items()},
        "image_seed": "21",
        "cn_type1": "PyraCanny",
        "cn_stop1": "",
        "cn_weight1": "0.8",
        # A slot without its image is ignored, as Fooocus-API ignores it.
        "cn_type3": "FaceSwap",
        "cn_weight3": "1.5",
        "save_meta": "false",
    }
    response = post_form(
        server, "/v1/generation/image-prompt", form, {"cn_img1": prompt_image}, headers=PNG
    )
    assert response.status_code == 200, response.text
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    slots = params["controlnet_image"]
    assert len(slots) == 1
    assert slots[0]["cn_type"] == "PyraCanny"
    assert slots[0]["cn_stop"] == 0.5  # PyraCanny's default stop
    assert slots[0]["cn_weight"] == 0.8
    assert params["fooocus_api"]["job_type"] == "Image Prompt"
    expected = reference_image(
        server,
        {
            **LIGHTNING,
            "image_seed": 21,
            "controlnet_image": [
                {"cn_img": b64(prompt_image), "cn_type": "PyraCanny", "cn_weight": 0.8}
            ],
            "inpaint_respective_field": 1.0,
        },
    )
    assert response.content == expected


@pytest.mark.parametrize(
    ("path", "form", "files", "loc"),
    [
        ("/v1/generation/image-upscale-vary", {"uov_method": "Vary (Subtle)"}, {}, "input_image"),
        ("/v1/generation/image-upscale-vary", {}, {"input_image": png_bytes()}, "uov_method"),
        (
            "/v1/generation/image-upscale-vary",
            {"uov_method": "Vary (Subtle)", "advanced_params": "{not json"},
            {"input_image": png_bytes()},
            "advanced_params",
        ),
        (
            "/v1/generation/image-upscale-vary",
            {"uov_method": "Vary (Subtle)", "advanced_params": json.dumps({"sampler_name": "x"})},
            {"input_image": png_bytes()},
            "advanced_params.sampler_name",
        ),
        ("/v1/generation/image-inpaint-outpaint", {}, {}, "input_image"),
        (
            "/v1/generation/image-inpaint-outpaint",
            {"outpaint_selections": "Left", "outpaint_distance_top": "abc"},
            {"input_image": png_bytes()},
            "outpaint_distance_top",
        ),
        ("/v1/generation/image-prompt", {"cn_type2": "Nope"}, {"cn_img2": png_bytes()}, "cn_type2"),
        (
            "/v1/generation/image-prompt",
            {"cn_stop1": "7"},
            {"cn_img1": png_bytes()},
            "cn_stop1",
        ),
        ("/v1/generation/image-prompt", {}, {"cn_img1": b"not an image"}, "cn_img1"),
    ],
)
def test_v1_form_422_names_the_form_field_and_echoes_the_body(
    server: LiveServer, path: str, form: dict[str, str], files: dict[str, bytes], loc: str
) -> None:
    before = task_count(server)
    response = post_form(server, path, {**form, **{k: str(v) for k, v in LIGHTNING.items()}}, files)
    assert response.status_code == 422, response.text
    body = response.json()
    assert ["body", *loc.split(".")] in [item["loc"] for item in body["detail"]]
    assert body["body"]["performance_selection"] == "Lightning"
    for name in files:
        assert body["body"][name] == f"{name}.png"  # a file is echoed by its name
    assert task_count(server) == before


def test_v1_form_route_refuses_a_json_body(server: LiveServer) -> None:
    response = post_json(server, "/v1/generation/image-upscale-vary", {"uov_method": "x"})
    assert response.status_code == 422
    assert "multipart/form-data" in response.json()["detail"][0]["msg"]


def test_v2_text_to_image_with_ip(server: LiveServer) -> None:
    prompt_image = png_bytes((64, 64), tint=30)
    body = {
        **LIGHTNING,
        **NO_META,
        "image_seed": 31,
        "image_prompts": [
            {"cn_img": b64(prompt_image), "cn_stop": 0, "cn_weight": 0, "cn_type": "ImagePrompt"},
            {"cn_img": None, "cn_stop": 0.3, "cn_weight": 1.0, "cn_type": "ImagePrompt"},
        ],
    }
    response = post_json(server, "/v2/generation/text-to-image-with-ip", body, headers=PNG)
    assert response.status_code == 200, response.text
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    # cn_stop/cn_weight 0 = the type's default (ImagePrompt 0.5 / 0.6); empty slots dropped.
    assert [(s["cn_stop"], s["cn_weight"]) for s in params["controlnet_image"]] == [(0.5, 0.6)]
    assert params["fooocus_api"]["job_type"] == "Text to Image"
    expected = reference_image(
        server,
        {
            **LIGHTNING,
            "image_seed": 31,
            "controlnet_image": [{"cn_img": b64(prompt_image), "cn_type": "ImagePrompt"}],
            "inpaint_respective_field": 1.0,
        },
    )
    assert response.content == expected


def test_v2_upscale_vary_defaults_and_mixing(server: LiveServer) -> None:
    source = png_bytes((64, 48))
    response = post_json(
        server,
        "/v2/generation/image-upscale-vary",
        {
            **LIGHTNING,
            "input_image": f"data:image/png;base64,{b64(source)}",
            "image_prompts": [{"cn_img": b64(png_bytes((64, 64), tint=9)), "cn_type": "CPDS"}],
        },
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    results = response.json()
    assert results[0]["finish_reason"] == "SUCCESS"
    image = Image.open(io.BytesIO(requests.get(results[0]["url"], timeout=10).content))
    assert image.size == (128, 96)  # Fooocus-API's default method on this route: Upscale (2x)
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    assert params["uov_method"] == "Upscale (2x)"
    assert params["mixing_image_prompt_and_vary_upscale"] is True
    assert params["controlnet_image"][0]["cn_type"] == "CPDS"


def test_v2_inpaint_outpaint_default_distances(server: LiveServer) -> None:
    source = png_bytes((64, 64))
    response = post_json(
        server,
        "/v2/generation/image-inpaint-outpaint",
        {
            **LIGHTNING,
            "input_image": b64(source),
            "input_mask": b64(mask_bytes((64, 64))),
            "outpaint_distance_left": -1,
            "outpaint_distance_right": -1,
            "outpaint_distance_top": -1,
            "outpaint_distance_bottom": -1,
            "async_process": True,
        },
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["job_type"] == "Image Inpaint or Outpaint"
    assert wait_job(server, job["job_id"])["job_stage"] == "SUCCESS"
    params = task_of(server, job["job_id"])["req_params"]
    assert params["outpaint_distance"] == [0, 0, 0, 0]
    assert params["inpaint_respective_field"] == 1.0


def test_v2_image_prompt_with_an_input_image_mixes_inpaint(server: LiveServer) -> None:
    response = post_json(
        server,
        "/v2/generation/image-prompt",
        {
            **LIGHTNING,
            "input_image": b64(png_bytes((64, 64))),
            "outpaint_selections": ["Right"],
            "outpaint_distance_right": 16,
            "image_prompts": [{"cn_img": b64(png_bytes((64, 64), tint=1)), "cn_type": "PyraCanny"}],
        },
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    params = task_of(server, response.headers["X-Task-Id"])["req_params"]
    assert params["mixing_image_prompt_and_inpaint"] is True
    assert params["outpaint_distance"] == [0, 0, 16, 0]
    assert params["fooocus_api"]["job_type"] == "Image Prompt"


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v2/generation/image-prompt", {}, ["body", "image_prompts"]),
        ("/v2/generation/image-upscale-vary", {}, ["body", "input_image"]),
        ("/v2/generation/image-upscale-vary", {"input_image": "aGVsbG8="}, ["body", "input_image"]),
        ("/v2/generation/image-inpaint-outpaint", {"input_image": ""}, ["body", "input_image"]),
        (
            "/v2/generation/text-to-image-with-ip",
            {"image_prompts": [{"cn_img": "aGVsbG8="}]},
            ["body", "image_prompts", 0, "cn_img"],
        ),
        (
            "/v2/generation/text-to-image-with-ip",
            {"image_prompts": [{"cn_img": b64(png_bytes()), "cn_weight": 9}]},
            ["body", "image_prompts", 0, "cn_weight"],
        ),
        # Fooocus-API silently dropped unknown styles and replaced unknown models: not here.
        (
            "/v1/generation/text-to-image",
            {"style_selections": ["No Such Style"]},
            ["body", "style_selections"],
        ),
        (
            "/v1/generation/text-to-image",
            {"base_model_name": "missing.safetensors"},
            ["body", "base_model_name"],
        ),
        (
            "/v1/generation/text-to-image",
            {"loras": [{"model_name": "nope.safetensors"}]},
            ["body", "loras", 0, "model_name"],
        ),
        (
            "/v1/generation/text-to-image",
            {"advanced_params": {"scheduler_name": "nope"}},
            ["body", "advanced_params", "scheduler_name"],
        ),
        ("/v1/generation/text-to-image", {"image_number": 0}, ["body", "image_number"]),
    ],
)
def test_json_422_has_fooocus_api_names_and_the_body(
    server: LiveServer, path: str, body: dict[str, object], loc: list[object]
) -> None:
    before = task_count(server)
    sent = {**LIGHTNING, **body}
    response = post_json(server, path, sent)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert loc in [item["loc"] for item in answer["detail"]], answer
    assert answer["body"] == sent
    assert task_count(server) == before


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b"{oops"])
def test_json_routes_refuse_bodies_that_are_not_objects(server: LiveServer, body: bytes) -> None:
    before = task_count(server)
    response = requests.post(
        f"{server.url}/v2/generation/text-to-image-with-ip",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "body" in response.json()
    assert task_count(server) == before


def test_image_enhance_runs_on_both_generations(server: LiveServer) -> None:
    """Fooocus-API's enhance routes: a region found by a mask model is inpainted, Fooocus-API's
    own defaults (Vary (Strong) first, only the final image kept) apply, one result per route."""
    tab = {"enhance_enabled": True, "enhance_mask_model": "u2net", "enhance_prompt": "a hat"}
    v1 = post_form(
        server,
        "/v1/generation/image-enhance",
        {
            **LIGHTNING,
            "enhance_enabled_1": "true",
            "enhance_mask_model_1": "u2net",
            "enhance_prompt_1": "a hat",
        },
        {"enhance_input_image": png_bytes()},
    )
    v2 = post_json(
        server,
        "/v2/generation/image-enhance",
        {**LIGHTNING, "enhance_input_image": b64(png_bytes()), "enhance_ctrlnets": [tab]},
    )
    for response in (v1, v2):
        assert response.status_code == 200, response.text
        results = response.json()
        assert len(results) == 1
        assert results[0]["finish_reason"] == "SUCCESS"
        image = Image.open(io.BytesIO(requests.get(results[0]["url"], timeout=10).content))
        assert image.size[0] > 0


def test_require_base64_in_async_results(server: LiveServer) -> None:
    job = post_json(
        server,
        "/v1/generation/text-to-image",
        {**LIGHTNING, "async_process": True, "require_base64": True},
    ).json()
    ended = wait_job(server, job["job_id"])
    item = ended["job_result"][0]
    data = base64.b64decode(item["base64"].split(",", 1)[1])
    assert data == requests.get(item["url"], timeout=10).content
