"""The generate request's one field table, the serializer built on it, and the conversion to an
engine request: plain unit tests (no server, no database, no model)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rest_framework import serializers

from engine import options
from engine.config import EngineConfig
from engine.types import EngineRequest, ImagePromptSpec, LoraSpec
from generation import fields
from generation.catalog import Catalog
from generation.params import engine_request_from_params, normalize_legacy, validate_generate
from generation.serializers import (
    GenerateRequestSerializer,
    ImagePromptSerializer,
    LoraSerializer,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = "base.safetensors"


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """Folders with one checkpoint, one LoRA and two styles (empty files: only names matter)."""
    models = tmp_path / "models"
    for folder, name in (("checkpoints", BASE), ("loras", "detail.safetensors")):
        (models / folder).mkdir(parents=True)
        (models / folder / name).write_bytes(b"")
    styles = tmp_path / "styles"
    styles.mkdir()
    entries = [{"name": "Fooocus Enhance", "prompt": "{prompt}"}, {"name": "Fooocus Sharp"}]
    (styles / "mine.json").write_text(json.dumps(entries))
    return Catalog(EngineConfig(models_dir=models, styles_dir=styles), ROOT / "presets")


def validate(catalog: Catalog, **body: Any) -> dict[str, Any]:
    serializer = GenerateRequestSerializer(
        data={"base_model_name": BASE, **body}, context={"catalog": catalog}
    )
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def errors(catalog: Catalog, **body: Any) -> dict[str, Any]:
    serializer = GenerateRequestSerializer(
        data={"base_model_name": BASE, **body}, context={"catalog": catalog}
    )
    assert not serializer.is_valid()
    return dict(serializer.errors)


def png_base64(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def engine_default(name: str) -> Any:
    value = fields.ENGINE_FIELDS[name].default
    return list(value) if isinstance(value, tuple) else value


# The table ------------------------------------------------------------------------------------


def test_every_serializer_field_is_an_engine_field_or_a_server_field() -> None:
    declared = set(GenerateRequestSerializer().fields)
    assert declared == set(fields.API_TO_ENGINE) | fields.SERVER_FIELDS
    assert not set(fields.API_TO_ENGINE) & fields.SERVER_FIELDS


def test_every_engine_field_comes_from_the_api_or_is_derived() -> None:
    reached = set(fields.API_TO_ENGINE.values()) | set(fields.DERIVED)
    assert reached == set(fields.ENGINE_FIELDS)
    for api_field in fields.DERIVED.values():
        assert api_field in GenerateRequestSerializer().fields


def test_serializer_defaults_are_the_engine_defaults_unless_the_table_says_otherwise() -> None:
    declared = GenerateRequestSerializer().fields
    overridden = {
        row.api: row.default for row in fields.API_FIELDS if row.default is not fields.FROM_ENGINE
    }
    assert overridden == {
        "image_seed": -1,
        "base_model_name": "",
        "style_selections": list(options.DEFAULT_STYLES),
    }
    for api, engine in fields.API_TO_ENGINE.items():
        field = declared[api]
        assert not field.required, api
        value = field.get_default()
        expected = overridden.get(api, engine_default(engine))
        assert value == expected, api


def test_defaults_come_from_engine_request_itself() -> None:
    # An independent reading of EngineRequest: what a client that sends nothing gets.
    request_defaults = {f.name: f.default for f in dataclasses.fields(EngineRequest)}
    declared = GenerateRequestSerializer().fields
    assert declared["sharpness"].get_default() == request_defaults["sharpness"] == 2.0
    assert declared["inpaint_respective_field"].get_default() == 0.618
    assert declared["outpaint_distance"].get_default() == [0, 0, 0, 0]
    assert declared["loras"].get_default() == []
    assert declared["aspect_ratios_selection"].get_default() == "1152*896"
    assert declared["inpaint_mask_image_upload"].get_default() is None


def test_nested_defaults_are_the_spec_defaults() -> None:
    lora = LoraSerializer().fields
    assert lora["enabled"].get_default() is LoraSpec("x").enabled
    assert lora["weight"].get_default() == LoraSpec("x").weight
    assert lora["model_name"].required
    slot = ImagePromptSerializer().fields
    assert slot["cn_type"].get_default() == ImagePromptSpec(Image.new("RGB", (1, 1))).cn_type


def test_a_declared_default_on_an_engine_backed_field_is_refused() -> None:
    class Twice(GenerateRequestSerializer):
        sharpness = serializers.FloatField(default=3.0)

    with pytest.raises(AssertionError, match="sharpness"):
        _ = Twice().fields


def test_rename_table_round_trips() -> None:
    for api, engine in fields.API_TO_ENGINE.items():
        assert fields.ENGINE_TO_API[engine] == api
        assert fields.api_name(engine) == api
    assert fields.api_name("seed") == "image_seed"
    assert fields.api_name("image_prompts") == "controlnet_image"
    assert fields.api_name("inpaint_mask_image") == "inpaint_mask_image_upload"
    assert fields.api_name("width") == fields.api_name("height") == "aspect_ratios_selection"
    assert fields.api_name("steps") == "overwrite_step"
    declared = set(GenerateRequestSerializer().fields)
    for old, new in fields.LEGACY_NAMES.items():
        assert new in declared
        assert old not in declared


@pytest.mark.parametrize(("old", "new"), sorted(fields.LEGACY_NAMES.items()))
def test_legacy_names_are_renamed_on_input(old: str, new: str) -> None:
    assert normalize_legacy({old: "value"}) == {new: "value"}
    # The current name wins when both are sent.
    assert normalize_legacy({old: "old", new: "new"}) == {new: "new"}


def test_server_fields_say_who_reads_them() -> None:
    for row in fields.API_FIELDS:
        if row.engine is None:
            assert row.used_by, row.api


# Validation of each field kind ------------------------------------------------------------------


def test_all_defaults_validate(catalog: Catalog) -> None:
    values = validate(catalog)
    # Fooocus's own defaults (reference: fooocus_engine.md).
    assert values["sampler_name"] == "dpmpp_2m_sde_gpu"
    assert values["scheduler_name"] == "karras"
    assert values["style_selections"] == list(options.DEFAULT_STYLES)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sharpness": 31}, "sharpness"),  # float range
        ({"guidance_scale": "high"}, "guidance_scale"),  # float type
        ({"image_number": 0}, "image_number"),  # int range
        ({"clip_skip": 1.5}, "clip_skip"),  # int type
        ({"sampler_name": "made_up"}, "sampler_name"),  # choice
        ({"uov_method": "Upscale (3x)"}, "uov_method"),  # choice from the uov registry
        ({"disable_preview": "perhaps"}, "disable_preview"),  # bool
        ({"outpaint_selections": ["Up"]}, "outpaint_selections"),  # list of choices
        ({"outpaint_distance": [1, 2, 3]}, "outpaint_distance"),  # list length
        ({"style_selections": ["No Such Style"]}, "style_selections"),  # catalog
        ({"base_model_name": "other.safetensors"}, "base_model_name"),  # catalog
        ({"loras": [{"weight": 1.0}]}, "loras"),  # nested: model_name required
        ({"loras": [{"model_name": "detail.safetensors", "weight": 3}]}, "loras"),  # nested range
        ({"controlnet_image": [{"cn_img": "not base64!"}]}, "controlnet_image"),  # image
        ({"uov_input_image": "data:image/png;base64,AAAA"}, "uov_input_image"),  # image
        ({"overwrite_step": 0}, "overwrite_step"),  # -1 or a range
        ({"overwrite_width": 100}, "overwrite_width"),  # multiple of 8
        ({"aspect_ratios_selection": "wide"}, "aspect_ratios_selection"),
        ({"output_format": "gif"}, "output_format"),
        ({"save_name": "../up"}, "save_name"),
        ({"uov_method": "Vary (Subtle)"}, "uov_input_image"),  # cross-field
        ({"canny_low_threshold": 200, "canny_high_threshold": 100}, "canny_low_threshold"),
    ],
)
def test_each_field_kind_is_validated(catalog: Catalog, body: dict[str, Any], field: str) -> None:
    assert field in errors(catalog, **body)


def test_values_are_normalised(catalog: Catalog) -> None:
    values = validate(
        catalog,
        aspect_ratios_selection="896×1152 ∣ 7:9",
        output_format="JPG",
        save_name="none",
        style_selections=["Fooocus Sharp", "Fooocus Sharp"],
        controlnet_image=[{"cn_img": png_base64((1, 2, 3)), "cn_type": "PyraCanny"}],
        loras=[{"model_name": "detail.safetensors"}],
    )
    assert values["aspect_ratios_selection"] == "896*1152"
    assert values["output_format"] == "jpeg"
    assert values["save_name"] is None
    assert values["style_selections"] == ["Fooocus Sharp"]
    (slot,) = values["controlnet_image"]
    assert (slot["cn_stop"], slot["cn_weight"]) == options.CN_TYPE_DEFAULTS["PyraCanny"]
    assert isinstance(slot["cn_img"], Image.Image)
    assert values["loras"] == [{"model_name": "detail.safetensors", "enabled": True, "weight": 0.5}]


# params -> EngineRequest ------------------------------------------------------------------------


def test_default_params_become_the_default_engine_request(catalog: Catalog) -> None:
    values = validate(catalog, image_seed=42)
    request = engine_request_from_params(values, load_images=False)
    expected = EngineRequest(base_model_name=BASE, style_selections=options.DEFAULT_STYLES, seed=42)
    assert request == expected


def test_conversion_renames_converts_and_derives(catalog: Catalog) -> None:
    picture = png_base64((200, 10, 10), (64, 64))
    values = validate(
        catalog,
        aspect_ratios_selection="1024*768",
        overwrite_height=512,
        image_number=3,
        image_seed=10,
        sharpness=5.5,
        style_selections=["Fooocus Enhance"],
        outpaint_selections=["Left", "Top"],
        outpaint_distance=[8, 16, 0, 0],
        loras=[
            {"model_name": "detail.safetensors", "weight": 0.7},
            {"model_name": "None"},
            {"model_name": "detail.safetensors", "enabled": False},
        ],
        inpaint_input_image=picture,
        inpaint_mask_image_upload=picture,
        controlnet_image=[{"cn_img": picture, "cn_type": "FaceSwap", "cn_weight": 1.5}],
    )
    values["performance_lora_name"] = "demo_lora.safetensors"
    request = engine_request_from_params(values, skip_images=2, load_images=False)
    assert (request.width, request.height) == (1024, 512)
    assert request.image_number == 1
    assert request.seed == 12  # two images done: the third image's seed
    assert request.sharpness == 5.5
    assert request.style_selections == ("Fooocus Enhance",)
    assert request.outpaint_selections == ("Left", "Top")
    assert request.outpaint_distance == (8, 16, 0, 0)
    assert request.loras == (LoraSpec("detail.safetensors", 0.7, True),)
    assert request.performance_lora_name == "demo_lora.safetensors"
    assert isinstance(request.inpaint_input_image, Image.Image)
    assert isinstance(request.inpaint_mask_image, Image.Image)
    (slot,) = request.image_prompts
    assert (slot.cn_type, slot.stop, slot.weight) == ("FaceSwap", 0.9, 1.5)
    no_increment = engine_request_from_params(
        {**values, "disable_seed_increment": True}, skip_images=2, load_images=False
    )
    assert no_increment.seed == 10


def test_stored_params_of_every_engine_field_reach_the_request(catalog: Catalog) -> None:
    # Change every plain engine-backed scalar from its default; each must arrive renamed.
    values = validate(catalog)
    changed: dict[str, Any] = {}
    for api in fields.API_TO_ENGINE:
        value = values[api]
        if isinstance(value, bool):
            changed[api] = not value
        elif isinstance(value, float):
            changed[api] = value / 2 if value > 0 else 0.25
        elif isinstance(value, int) and api not in ("image_number", "image_seed"):
            changed[api] = value + 1
    request = engine_request_from_params({**values, **changed}, load_images=False)
    for api, value in changed.items():
        assert getattr(request, fields.API_TO_ENGINE[api]) == value, api


def test_validate_generate_applies_the_preset_and_its_lora_file(catalog: Catalog) -> None:
    validated = validate_generate(
        {"preset": "demo", "performance_selection": "Lightning", "base_model_name": BASE},
        catalog=catalog,
    )
    assert validated.values["aspect_ratios_selection"] == "64*64"
    assert validated.values["performance_lora_name"] == "demo_lightning_4step_lora.safetensors"
    assert "preset" in validated.sent
