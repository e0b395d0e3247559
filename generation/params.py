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

from engine.types import EngineRequest, ImagePromptSpec, LoraSpec
from generation.catalog import Catalog
from generation.serializers import GenerateRequestSerializer, parse_aspect_ratio
from generation.tools.enhance_fields import enhance_spec_from_params
from history.files import input_image_store, resolve_input

# Fooocus-API name -> FooocusAPI name (when only the old name is sent).
LEGACY_NAMES: dict[str, str] = {
    "input_mask": "inpaint_mask_image_upload",
    "image_prompts": "controlnet_image",
    "upscale_value": "upscale_multiple",
    "save_meta": "save_metadata_to_images",
    "meta_scheme": "metadata_scheme",
    "save_extension": "output_format",
}
OUTPAINT_LEGACY = (
    "outpaint_distance_left",
    "outpaint_distance_top",
    "outpaint_distance_right",
    "outpaint_distance_bottom",
)
IMAGE_FIELDS = (
    "uov_input_image",
    "inpaint_input_image",
    "inpaint_mask_image_upload",
    "enhance_input_image",
)
# Random seeds stay below 2**53 so JavaScript clients read them exactly.
RANDOM_SEED_LIMIT = 2**53 - 1


def normalize_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Accept Fooocus-API bodies: ``advanced_params`` flattened, old field names renamed."""
    data = dict(data)
    advanced = data.pop("advanced_params", None)
    if isinstance(advanced, dict):
        for key, value in advanced.items():
            data.setdefault(key, value)
    for old, new in LEGACY_NAMES.items():
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
    """Build the engine's request from stored ``req_params``.

    ``skip_images`` leaves out images a previous attempt already finished (a re-queued task
    resumes with the next image and its seed). ``load_images=False`` checks the request without
    reading input files (used at validation time, before they are stored).
    """
    width, height = parse_aspect_ratio(params["aspect_ratios_selection"])
    if params["overwrite_width"] > 0:
        width = params["overwrite_width"]
    if params["overwrite_height"] > 0:
        height = params["overwrite_height"]
    seed = int(params["image_seed"])
    if skip_images and not params["disable_seed_increment"]:
        seed = (seed + skip_images) % (2**63)

    def image(key: str) -> Image.Image | None:
        value = params.get(key)
        if not load_images:
            return value if isinstance(value, Image.Image) else None
        return _load_input(value) if value else None

    prompts: list[ImagePromptSpec] = []
    for slot in params.get("controlnet_image", []):
        cn_img = slot.get("cn_img")
        picture = cn_img if isinstance(cn_img, Image.Image) else None
        if load_images and isinstance(cn_img, str):
            picture = _load_input(cn_img)
        if picture is not None:
            prompts.append(
                ImagePromptSpec(picture, slot["cn_type"], slot["cn_stop"], slot["cn_weight"])
            )
    return EngineRequest(
        base_model_name=params["base_model_name"],
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        style_selections=tuple(params["style_selections"]),
        performance_selection=params["performance_selection"],
        width=width,
        height=height,
        image_number=params["image_number"] - skip_images,
        seed=seed,
        sharpness=params["sharpness"],
        guidance_scale=params["guidance_scale"],
        refiner_model_name=params["refiner_model_name"],
        refiner_switch=params["refiner_switch"],
        loras=tuple(
            LoraSpec(lora["model_name"], lora["weight"], lora["enabled"])
            for lora in params["loras"]
            if lora["enabled"] and lora["model_name"] != "None"
        ),
        performance_lora_name=params.get("performance_lora_name"),
        sampler_name=params["sampler_name"],
        scheduler_name=params["scheduler_name"],
        vae_name=params["vae_name"],
        adm_scaler_positive=params["adm_scaler_positive"],
        adm_scaler_negative=params["adm_scaler_negative"],
        adm_scaler_end=params["adm_scaler_end"],
        adaptive_cfg=params["adaptive_cfg"],
        clip_skip=params["clip_skip"],
        overwrite_step=params["overwrite_step"],
        overwrite_switch=params["overwrite_switch"],
        refiner_swap_method=params["refiner_swap_method"],
        freeu_enabled=params["freeu_enabled"],
        freeu_b1=params["freeu_b1"],
        freeu_b2=params["freeu_b2"],
        freeu_s1=params["freeu_s1"],
        freeu_s2=params["freeu_s2"],
        disable_preview=params["disable_preview"],
        disable_intermediate_results=params["disable_intermediate_results"],
        disable_seed_increment=params["disable_seed_increment"],
        black_out_nsfw=params["black_out_nsfw"],
        read_wildcards_in_order=params["read_wildcards_in_order"],
        metadata_scheme=params["metadata_scheme"],
        uov_method=params["uov_method"],
        uov_input_image=image("uov_input_image"),
        upscale_multiple=params["upscale_multiple"],
        overwrite_vary_strength=params["overwrite_vary_strength"],
        overwrite_upscale_strength=params["overwrite_upscale_strength"],
        inpaint_input_image=image("inpaint_input_image"),
        inpaint_mask_image=image("inpaint_mask_image_upload"),
        inpaint_additional_prompt=params["inpaint_additional_prompt"],
        outpaint_selections=tuple(params["outpaint_selections"]),
        outpaint_distance=tuple(params["outpaint_distance"]),
        inpaint_engine=params["inpaint_engine"],
        inpaint_strength=params["inpaint_strength"],
        inpaint_respective_field=params["inpaint_respective_field"],
        inpaint_disable_initial_latent=params["inpaint_disable_initial_latent"],
        invert_mask_checkbox=params["invert_mask_checkbox"],
        inpaint_erode_or_dilate=params["inpaint_erode_or_dilate"],
        debugging_inpaint_preprocessor=params["debugging_inpaint_preprocessor"],
        image_prompts=tuple(prompts),
        mixing_image_prompt_and_vary_upscale=params["mixing_image_prompt_and_vary_upscale"],
        mixing_image_prompt_and_inpaint=params["mixing_image_prompt_and_inpaint"],
        debugging_cn_preprocessor=params["debugging_cn_preprocessor"],
        skipping_cn_preprocessor=params["skipping_cn_preprocessor"],
        canny_low_threshold=params["canny_low_threshold"],
        canny_high_threshold=params["canny_high_threshold"],
        controlnet_softness=params["controlnet_softness"],
        enhance=enhance_spec_from_params(params, image),
    )
