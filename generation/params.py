"""From a client's JSON body to stored ``req_params``, and from ``req_params`` to an engine request.

The steps: older Fooocus-API names are mapped to FooocusAPI's; the preset fills the fields the
client did not send; the serializer validates everything; input images are stored by content
hash and replaced by their URLs; the random seed is resolved so that the stored parameters
reproduce the task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image
from rest_framework import serializers

from engine import options
from engine.types import EngineRequest, ImagePromptSpec, LoraSpec
from generation import fields
from generation.catalog import Catalog
from generation.serializers import GenerateRequestSerializer, parse_aspect_ratio
from generation.tools.enhance_fields import enhance_spec_from_params
from generation.unsupported import unsupported_field_errors
from history.files import input_image_store, resolve_input

OUTPAINT_LEGACY = (
    "outpaint_distance_left",
    "outpaint_distance_top",
    "outpaint_distance_right",
    "outpaint_distance_bottom",
)
IMAGE_ENGINE_FIELDS = ("uov_input_image", "inpaint_input_image", "inpaint_mask_image")
# The image fields of the API (stored by hash, replaced by their URLs), enhance's included.
IMAGE_FIELDS = (*(fields.api_name(name) for name in IMAGE_ENGINE_FIELDS), "enhance_input_image")
# Random seeds stay below 2**53 so JavaScript clients read them exactly.
RANDOM_SEED_LIMIT = 2**53 - 1


def normalize_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Accept Fooocus-API bodies: ``advanced_params`` flattened, old field names renamed."""
    data = dict(data)
    advanced = data.pop("advanced_params", None)
    if isinstance(advanced, dict):
        for key, value in advanced.items():
            data.setdefault(key, value)
    for old, new in fields.LEGACY_NAMES.items():
        if old in data:
            value = data.pop(old)
            data.setdefault(new, value)
    if "input_image" in data:
        value = data.pop("input_image")
        wants_inpaint = bool(data.get("inpaint_mask_image_upload")) or bool(
            data.get("outpaint_selections")
        )
        data.setdefault("inpaint_input_image" if wants_inpaint else "uov_input_image", value)
    if any(key in data for key in OUTPAINT_LEGACY) and "outpaint_distance" not in data:
        data["outpaint_distance"] = [data.get(key) or 0 for key in OUTPAINT_LEGACY]
    for key in OUTPAINT_LEGACY:
        data.pop(key, None)
    return data


@dataclass(frozen=True)
class ValidatedGenerate:
    """A validated request: the values, the decoded images, and what the client sent."""

    values: dict[str, Any]
    sent: frozenset[str]


def validate_generate(data: Any, *, catalog: Catalog, binary: bool = False) -> ValidatedGenerate:
    """Validate a generate body, preset applied. Raises DRF ``ValidationError`` (422)."""
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["the body must be a JSON object"]})
    data = normalize_legacy(data)
    not_yet = unsupported_field_errors(data)
    if not_yet:
        raise serializers.ValidationError(not_yet)
    sent = frozenset(data)
    preset_name = data.get("preset", "initial")
    if not isinstance(preset_name, str) or (
        preset_name != "initial" and preset_name not in catalog.presets()
    ):
        raise serializers.ValidationError({"preset": [f"unknown preset {preset_name!r}"]})
    preset = catalog.preset(preset_name)
    merged = {**preset.defaults, **data}
    serializer = GenerateRequestSerializer(data=merged, context={"catalog": catalog})
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    if binary:
        # One image answers a binary request (after validation, so a bad value is still named).
        values["image_number"] = 1
    # The preset may replace a LoRA performance's file (other model families, the demo set).
    values["performance_lora_name"] = preset.performance_loras.get(values["performance_selection"])
    return ValidatedGenerate(values=values, sent=sent)


def _store(image: Image.Image | None) -> str:
    return f"/inputs/{input_image_store(image)}" if image is not None else ""


def build_req_params(validated: ValidatedGenerate) -> dict[str, Any]:
    """The JSON kept with the task: every field resolved, images replaced by their stored URLs."""
    values = dict(validated.values)
    params: dict[str, Any] = {}
    for key, value in values.items():
        if key in IMAGE_FIELDS:
            params[key] = _store(value)
        elif key == "controlnet_image":
            params[key] = [{**slot, "cn_img": _store(slot.get("cn_img"))} for slot in value]
        elif key == "loras":
            params[key] = [dict(lora) for lora in value]
        else:
            params[key] = value
    if params["image_seed"] == -1:
        params["image_seed"] = random.randint(0, RANDOM_SEED_LIMIT)
    return params


def _load_input(url: str) -> Image.Image | None:
    if not url:
        return None
    path = resolve_input(url.rsplit("/", 1)[-1])
    if path is None:
        raise FileNotFoundError(f"stored input image {url} is missing")
    with Image.open(path) as image:
        image.load()
        return image.copy()


def engine_request_from_params(
    params: dict[str, Any], *, skip_images: int = 0, load_images: bool = True
) -> EngineRequest:
    """Build the engine's request from stored ``req_params`` (through :mod:`generation.fields`).

    ``skip_images`` leaves out images a previous attempt already finished (a re-queued task
    resumes with the next image and its seed). ``load_images=False`` checks the request without
    reading input files (used at validation time, before they are stored).
    """

    def image(value: Any) -> Image.Image | None:
        if isinstance(value, Image.Image):
            return value
        if load_images and isinstance(value, str):
            return _load_input(value)
        return None

    def convert(engine_field: str, value: Any) -> Any:
        if engine_field in IMAGE_ENGINE_FIELDS:
            return image(value)
        if engine_field == "loras":
            return tuple(
                LoraSpec(lora["model_name"], lora["weight"], lora["enabled"])
                for lora in value
                if lora["enabled"] and lora["model_name"] != options.NO_MODEL
            )
        if engine_field == "image_prompts":
            slots = [(image(slot.get("cn_img")), slot) for slot in value]
            return tuple(
                ImagePromptSpec(picture, slot["cn_type"], slot["cn_stop"], slot["cn_weight"])
                for picture, slot in slots
                if picture is not None
            )
        return value

    values = fields.engine_values(params, convert)
    width, height = parse_aspect_ratio(params["aspect_ratios_selection"])
    values["width"] = params["overwrite_width"] if params["overwrite_width"] > 0 else width
    values["height"] = params["overwrite_height"] if params["overwrite_height"] > 0 else height
    values["performance_lora_name"] = params.get("performance_lora_name")
    seed = int(params["image_seed"])
    if skip_images and not params["disable_seed_increment"]:
        seed = (seed + skip_images) % (2**63)
    values["seed"] = seed
    values["image_number"] = params["image_number"] - skip_images
    values["enhance"] = enhance_spec_from_params(params, lambda key: image(params.get(key)))
    return EngineRequest(**values)
