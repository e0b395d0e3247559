"""The enhance fields of the generate request (reference fooocusapi §2.2, ``EnhanceCtrlNets``),
their cross-field checks, and the engine's :class:`~engine.tools.types.EnhanceSpec` built from
stored ``req_params``. Torch-free, like the rest of the web side."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from rest_framework import serializers

from engine import options
from engine.tools.types import (
    CLOTH_CATEGORIES,
    ENHANCE_PROMPT_ORIGINAL,
    ENHANCE_PROMPT_TYPES,
    ENHANCE_UOV_BEFORE,
    ENHANCE_UOV_ORDERS,
    MASK_MODELS,
    MAX_ENHANCE_REGIONS,
    MAX_SAM_DETECTIONS,
    SAM_MODELS,
    EnhanceRegion,
    EnhanceSpec,
)
from generation.images import ImageInputField

# Request name of each region field -> EnhanceRegion's name.
REGION_FIELDS: dict[str, str] = {
    "enhance_mask_dino_prompt": "mask_dino_prompt",
    "enhance_prompt": "prompt",
    "enhance_negative_prompt": "negative_prompt",
    "enhance_mask_model": "mask_model",
    "enhance_mask_cloth_category": "cloth_category",
    "enhance_mask_sam_model": "sam_model",
    "enhance_mask_text_threshold": "text_threshold",
    "enhance_mask_box_threshold": "box_threshold",
    "enhance_mask_sam_max_detections": "sam_max_detections",
    "enhance_inpaint_disable_initial_latent": "inpaint_disable_initial_latent",
    "enhance_inpaint_engine": "inpaint_engine",
    "enhance_inpaint_strength": "inpaint_strength",
    "enhance_inpaint_respective_field": "inpaint_respective_field",
    "enhance_inpaint_erode_or_dilate": "inpaint_erode_or_dilate",
    "enhance_mask_invert": "mask_invert",
}


class EnhanceCtrlSerializer(serializers.Serializer):
    """One enhance tab; only ``enhance_enabled`` ones run."""

    enhance_enabled = serializers.BooleanField(default=False)
    enhance_mask_dino_prompt = serializers.CharField(default="", allow_blank=True, max_length=1000)
    enhance_prompt = serializers.CharField(default="", allow_blank=True, trim_whitespace=False)
    enhance_negative_prompt = serializers.CharField(
        default="", allow_blank=True, trim_whitespace=False
    )
    enhance_mask_model = serializers.ChoiceField(choices=MASK_MODELS, default="sam")
    enhance_mask_cloth_category = serializers.ChoiceField(choices=CLOTH_CATEGORIES, default="full")
    enhance_mask_sam_model = serializers.ChoiceField(choices=SAM_MODELS, default="vit_b")
    enhance_mask_text_threshold = serializers.FloatField(default=0.25, min_value=0, max_value=1)
    enhance_mask_box_threshold = serializers.FloatField(default=0.3, min_value=0, max_value=1)
    enhance_mask_sam_max_detections = serializers.IntegerField(
        default=0, min_value=0, max_value=MAX_SAM_DETECTIONS
    )
    enhance_inpaint_disable_initial_latent = serializers.BooleanField(default=False)
    enhance_inpaint_engine = serializers.ChoiceField(
        choices=options.INPAINT_ENGINES, default="v2.6"
    )
    enhance_inpaint_strength = serializers.FloatField(default=1.0, min_value=0, max_value=1)
    enhance_inpaint_respective_field = serializers.FloatField(
        default=0.618, min_value=0, max_value=1
    )
    enhance_inpaint_erode_or_dilate = serializers.IntegerField(
        default=0, min_value=-64, max_value=64
    )
    enhance_mask_invert = serializers.BooleanField(default=False)


class EnhanceFields(serializers.Serializer):
    """The enhance fields, mixed into the generate request serializer."""

    enhance_input_image = ImageInputField()
    enhance_checkbox = serializers.BooleanField(default=False)
    enhance_uov_method = serializers.ChoiceField(choices=options.UOV_METHODS, default="Disabled")
    enhance_uov_processing_order = serializers.ChoiceField(
        choices=ENHANCE_UOV_ORDERS, default=ENHANCE_UOV_BEFORE
    )
    enhance_uov_prompt_type = serializers.ChoiceField(
        choices=ENHANCE_PROMPT_TYPES, default=ENHANCE_PROMPT_ORIGINAL
    )
    enhance_ctrls = serializers.ListField(
        child=EnhanceCtrlSerializer(), default=list, max_length=MAX_ENHANCE_REGIONS
    )
    save_final_enhanced_image_only = serializers.BooleanField(default=False)
    debugging_enhance_masks_checkbox = serializers.BooleanField(default=False)
    debugging_dino = serializers.BooleanField(default=False)
    dino_erode_or_dilate = serializers.IntegerField(default=0, min_value=-64, max_value=64)
    # FooocusAPI sets it itself (true exactly when a mask is uploaded); accepted, not read.
    inpaint_advanced_masking_checkbox = serializers.BooleanField(default=False)


def validate_enhance(attrs: dict[str, Any]) -> None:
    """Enhance asked for with nothing to do (or an enhance image without enhance) is refused."""
    if attrs.get("enhance_input_image") is not None and not attrs["enhance_checkbox"]:
        raise serializers.ValidationError(
            {"enhance_checkbox": "enhance_input_image is only used with enhance_checkbox true"}
        )
    if not attrs["enhance_checkbox"]:
        return
    enabled = [ctrl for ctrl in attrs["enhance_ctrls"] if ctrl["enhance_enabled"]]
    if not enabled and attrs["enhance_uov_method"] == "Disabled":
        raise serializers.ValidationError(
            {
                "enhance_ctrls": "nothing to enhance: enable an enhance_ctrls entry "
                "or set enhance_uov_method"
            }
        )


def enhance_spec_from_params(
    params: dict[str, Any], load_image: Callable[[str], Image.Image | None]
) -> EnhanceSpec | None:
    """The engine's enhance spec from stored ``req_params``; None when enhance is off."""
    if not params.get("enhance_checkbox"):
        return None
    regions = tuple(
        EnhanceRegion(**{name: ctrl[key] for key, name in REGION_FIELDS.items()})
        for ctrl in params.get("enhance_ctrls", [])
        if ctrl["enhance_enabled"]
    )
    return EnhanceSpec(
        input_image=load_image("enhance_input_image"),
        regions=regions,
        uov_method=params["enhance_uov_method"],
        uov_processing_order=params["enhance_uov_processing_order"],
        uov_prompt_type=params["enhance_uov_prompt_type"],
        save_final_enhanced_image_only=params["save_final_enhanced_image_only"],
        debugging_enhance_masks=params["debugging_enhance_masks_checkbox"],
        debugging_dino=params["debugging_dino"],
        dino_erode_or_dilate=params["dino_erode_or_dilate"],
    )
