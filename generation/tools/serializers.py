"""Validation of the tool requests (reference fooocusapi §1.3-1.4); torch-free."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from engine.tools.types import (
    CLOTH_CATEGORIES,
    DEFAULT_MASK_MODEL,
    DESCRIBE_TYPES,
    MASK_MODELS,
    MAX_DINO_GROW,
    MAX_SAM_DETECTIONS,
    SAM_MODELS,
)
from generation.images import ImageInputField, clean_webhook_url


class ToolRequestSerializer(serializers.Serializer):
    """The fields every tool request has: the image and how to answer."""

    image = ImageInputField(required=True, allow_null=False, default=serializers.empty)
    async_process = serializers.BooleanField(default=False)
    stream_output = serializers.BooleanField(default=False)
    webhook_url = serializers.CharField(default="", allow_blank=True, allow_null=True)

    def validate_image(self, value: Any) -> Any:
        if value is None:
            raise serializers.ValidationError("an image is required")
        return value

    def validate_webhook_url(self, value: str | None) -> str:
        return clean_webhook_url(value)


class DescribeImageSerializer(ToolRequestSerializer):
    """``{"image": ..., "image_type": "Photo" | "Anime"}``."""

    image_type = serializers.ChoiceField(choices=DESCRIBE_TYPES, default="Photo")


class GenerateMaskSerializer(ToolRequestSerializer):
    """FooocusAPI's ``GenerateMaskRequest``."""

    mask_model = serializers.ChoiceField(choices=MASK_MODELS, default=DEFAULT_MASK_MODEL)
    cloth_category = serializers.ChoiceField(choices=CLOTH_CATEGORIES, default="full")
    dino_prompt_text = serializers.CharField(default="", allow_blank=True, max_length=1000)
    sam_model = serializers.ChoiceField(choices=SAM_MODELS, default="vit_b")
    box_threshold = serializers.FloatField(default=0.3, min_value=0.0, max_value=1.0)
    text_threshold = serializers.FloatField(default=0.25, min_value=0.0, max_value=1.0)
    sam_max_detections = serializers.IntegerField(
        default=0, min_value=0, max_value=MAX_SAM_DETECTIONS
    )
    dino_erode_or_dilate = serializers.FloatField(
        default=0, min_value=-MAX_DINO_GROW, max_value=MAX_DINO_GROW
    )
    dino_debug = serializers.BooleanField(default=False)
