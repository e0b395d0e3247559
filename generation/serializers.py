"""Validation of the generate request (FooocusAPI's flat field set) and of the task queries."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.fields import empty

from engine import options
from generation import fields
from generation.catalog import Catalog
from generation.images import ImageInputField, clean_webhook_url
from generation.tools.enhance_fields import EnhanceFields, validate_enhance

MAX_SEED = 2**63 - 1
WEBHOOK_EVENTS = ("queued", "started", "progress", "finished", "failed", "stop", "canceled")
DEFAULT_WEBHOOK_EVENTS = ("finished", "failed", "stop", "canceled")
_RATIO = re.compile(r"^\s*(\d+)\s*[*×xX]\s*(\d+)")
_SAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


def parse_aspect_ratio(value: str) -> tuple[int, int]:
    """``"1152*896"`` (also ``1152×896`` and Fooocus's labels ``"1152×896 ∣ 9:7"``) → (w, h)."""
    match = _RATIO.match(value)
    if not match:
        raise serializers.ValidationError("must look like W*H, e.g. 1152*896")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side % 8 or not 64 <= side <= 4096:
            raise serializers.ValidationError("W and H must be multiples of 8 in 64..4096")
    return width, height


class EngineDefaults(serializers.Serializer):
    # A serializer whose engine-backed fields take their defaults from generation.fields: they are
    # declared without one (types, ranges and checks only) and each instance fills it in, so the
    # engine's request type stays the one place a default is written. Fields the server reads
    # (no engine counterpart) declare their own. (A comment, not a docstring: drf-spectacular
    # would put a docstring into the schema of every subclass.)

    # The list field of generation.fields.NESTED_FIELDS whose items this serializer validates.
    item_of: str | None = None

    def default_for(self, name: str) -> Any:
        if self.item_of is not None:
            return fields.nested_default(self.item_of, name)
        return fields.api_default(name)

    def get_fields(self) -> dict[str, serializers.Field]:
        declared = super().get_fields()
        for name, field in declared.items():
            default = self.default_for(name)
            if default is dataclasses.MISSING:
                continue
            if field.default is not empty and field.default is not None:
                raise AssertionError(f"{type(self).__name__}.{name}: its default is the engine's")
            field.default = default
            field.required = False
        return declared


class LoraSerializer(EngineDefaults):
    item_of = "loras"

    enabled = serializers.BooleanField()
    model_name = serializers.CharField(allow_blank=False, max_length=255)
    weight = serializers.FloatField(min_value=-2.0, max_value=2.0)


class ImagePromptSerializer(EngineDefaults):
    item_of = "controlnet_image"

    cn_img = ImageInputField()
    cn_stop = serializers.FloatField(allow_null=True, min_value=0, max_value=1)
    cn_weight = serializers.FloatField(allow_null=True, min_value=0, max_value=2)
    cn_type = serializers.ChoiceField(choices=options.CN_TYPES)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        default_stop, default_weight = options.CN_TYPE_DEFAULTS[attrs["cn_type"]]
        if attrs.get("cn_stop") is None:
            attrs["cn_stop"] = default_stop
        if attrs.get("cn_weight") is None:
            attrs["cn_weight"] = default_weight
        return attrs


def _overwrite(value: float, low: float, high: float) -> None:
    if value != -1 and not low <= value <= high:
        raise serializers.ValidationError(f"must be -1 (off) or in {low}..{high}")


class GenerateRequestSerializer(EngineDefaults, EnhanceFields):
    """Every field of FooocusAPI's generate request. Defaults are the built-in ones; presets are
    merged into the data before validation (a field the client sent always wins)."""

    # The built-in defaults of engine-backed fields are the engine's (see EngineDefaults).

    prompt = serializers.CharField(allow_blank=True, trim_whitespace=False)
    negative_prompt = serializers.CharField(allow_blank=True, trim_whitespace=False)
    style_selections = serializers.ListField(child=serializers.CharField())
    performance_selection = serializers.ChoiceField(choices=list(options.PERFORMANCES))
    aspect_ratios_selection = serializers.CharField(
        default=f"{fields.ENGINE_FIELDS['width'].default}*{fields.ENGINE_FIELDS['height'].default}"
    )
    image_number = serializers.IntegerField(min_value=1, max_value=32)
    image_seed = serializers.IntegerField(min_value=-1, max_value=MAX_SEED)
    sharpness = serializers.FloatField(min_value=0, max_value=30)
    guidance_scale = serializers.FloatField(min_value=1, max_value=30)
    base_model_name = serializers.CharField()
    refiner_model_name = serializers.CharField()
    refiner_switch = serializers.FloatField(min_value=0.1, max_value=1.0)
    loras = serializers.ListField(child=LoraSerializer())
    input_image_checkbox = serializers.BooleanField(default=True)
    current_tab = serializers.CharField(default="", allow_blank=True)
    uov_method = serializers.ChoiceField(choices=options.UOV_METHODS)
    upscale_multiple = serializers.FloatField(
        min_value=options.MIN_UPSCALE, max_value=options.MAX_UPSCALE
    )
    uov_input_image = ImageInputField()
    outpaint_selections = serializers.ListField(
        child=serializers.ChoiceField(choices=options.OUTPAINT_DIRECTIONS)
    )
    outpaint_distance = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=4096), min_length=4, max_length=4
    )
    inpaint_input_image = ImageInputField()
    inpaint_mask_image_upload = ImageInputField()
    inpaint_additional_prompt = serializers.CharField(allow_blank=True)
    controlnet_image = serializers.ListField(child=ImagePromptSerializer(), max_length=4)
    disable_preview = serializers.BooleanField()
    disable_intermediate_results = serializers.BooleanField(default=False)
    disable_seed_increment = serializers.BooleanField()
    black_out_nsfw = serializers.BooleanField()
    adm_scaler_positive = serializers.FloatField(min_value=0, max_value=3)
    adm_scaler_negative = serializers.FloatField(min_value=0, max_value=3)
    adm_scaler_end = serializers.FloatField(min_value=0, max_value=1)
    adaptive_cfg = serializers.FloatField(min_value=1, max_value=30)
    clip_skip = serializers.IntegerField(min_value=1, max_value=12)
    sampler_name = serializers.ChoiceField(choices=options.SAMPLERS)
    scheduler_name = serializers.ChoiceField(choices=options.SCHEDULERS)
    vae_name = serializers.CharField()
    overwrite_step = serializers.IntegerField()
    overwrite_switch = serializers.FloatField()
    overwrite_width = serializers.IntegerField(default=-1)
    overwrite_height = serializers.IntegerField(default=-1)
    overwrite_vary_strength = serializers.FloatField()
    overwrite_upscale_strength = serializers.FloatField()
    mixing_image_prompt_and_vary_upscale = serializers.BooleanField(default=False)
    mixing_image_prompt_and_inpaint = serializers.BooleanField(default=False)
    debugging_cn_preprocessor = serializers.BooleanField()
    skipping_cn_preprocessor = serializers.BooleanField()
    canny_low_threshold = serializers.IntegerField(min_value=1, max_value=255)
    canny_high_threshold = serializers.IntegerField(min_value=1, max_value=255)
    refiner_swap_method = serializers.ChoiceField(choices=options.REFINER_SWAP_METHODS)
    controlnet_softness = serializers.FloatField(min_value=0, max_value=1)
    freeu_enabled = serializers.BooleanField()
    freeu_b1 = serializers.FloatField()
    freeu_b2 = serializers.FloatField()
    freeu_s1 = serializers.FloatField()
    freeu_s2 = serializers.FloatField()
    debugging_inpaint_preprocessor = serializers.BooleanField()
    inpaint_disable_initial_latent = serializers.BooleanField()
    inpaint_engine = serializers.ChoiceField(choices=options.INPAINT_ENGINES)
    inpaint_strength = serializers.FloatField(min_value=0, max_value=1)
    inpaint_respective_field = serializers.FloatField(min_value=0, max_value=1)
    inpaint_mask_upload_checkbox = serializers.BooleanField(default=False)
    invert_mask_checkbox = serializers.BooleanField()
    inpaint_erode_or_dilate = serializers.IntegerField(min_value=-64, max_value=64)
    generate_image_grid = serializers.BooleanField(default=False)
    preset = serializers.CharField(default="initial")
    save_metadata_to_images = serializers.BooleanField(default=True)
    metadata_scheme = serializers.ChoiceField(choices=options.METADATA_SCHEMES)
    output_format = serializers.CharField(default="png")
    save_name = serializers.CharField(default=None, allow_null=True, allow_blank=True)
    read_wildcards_in_order = serializers.BooleanField()
    require_base64 = serializers.BooleanField(default=False)
    async_process = serializers.BooleanField(default=False)
    stream_output = serializers.BooleanField(default=False)
    webhook_url = serializers.CharField(default="", allow_blank=True, allow_null=True)
    webhook_events = serializers.ListField(
        child=serializers.ChoiceField(choices=WEBHOOK_EVENTS),
        default=list(DEFAULT_WEBHOOK_EVENTS),
    )

    @property
    def catalog(self) -> Catalog:
        catalog = self.context["catalog"]
        assert isinstance(catalog, Catalog)
        return catalog

    # Field-level checks -------------------------------------------------------------------
    def validate_aspect_ratios_selection(self, value: str) -> str:
        width, height = parse_aspect_ratio(value)
        return f"{width}*{height}"

    def validate_image_number(self, value: int) -> int:
        if value > settings.FOOOCUS_MAX_IMAGE_NUMBER:
            raise serializers.ValidationError(
                f"this server allows at most {settings.FOOOCUS_MAX_IMAGE_NUMBER} images a request"
            )
        return value

    def validate_overwrite_step(self, value: int) -> int:
        _overwrite(value, 1, 200)
        return value

    def validate_overwrite_switch(self, value: float) -> float:
        _overwrite(value, 0, 200)
        return value

    def validate_overwrite_width(self, value: int) -> int:
        _overwrite(value, 64, 4096)
        if value != -1 and value % 8:
            raise serializers.ValidationError("must be a multiple of 8")
        return value

    validate_overwrite_height = validate_overwrite_width

    def validate_overwrite_vary_strength(self, value: float) -> float:
        _overwrite(value, 0, 1)
        return value

    validate_overwrite_upscale_strength = validate_overwrite_vary_strength

    def validate_output_format(self, value: str) -> str:
        value = value.lower()
        if value == "jpg":
            value = "jpeg"
        if value not in options.OUTPUT_FORMATS:
            raise serializers.ValidationError(f"must be one of {', '.join(options.OUTPUT_FORMATS)}")
        return value

    def validate_save_name(self, value: str | None) -> str | None:
        if value is None or value.strip().lower() in {"", "none"}:
            return None
        if not _SAVE_NAME.match(value) or ".." in value:
            raise serializers.ValidationError(
                "must be a plain file-name stem: letters, digits, '.', '_', '-' and spaces; "
                "no path separators or '..'"
            )
        return value

    def validate_webhook_url(self, value: str | None) -> str:
        return clean_webhook_url(value)

    def _prompt_length(self, value: str) -> str:
        limit = settings.FOOOCUS_MAX_PROMPT_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(f"longer than {limit} characters")
        return value

    validate_prompt = _prompt_length
    validate_negative_prompt = _prompt_length
    validate_inpaint_additional_prompt = _prompt_length

    def validate_style_selections(self, value: list[str]) -> list[str]:
        known = set(self.catalog.styles())
        unknown = [name for name in value if name not in known]
        if unknown:
            raise serializers.ValidationError(f"unknown styles: {', '.join(unknown)}")
        return list(dict.fromkeys(value))

    def validate_base_model_name(self, value: str) -> str:
        if not self.catalog.model_available("checkpoints", value):
            raise serializers.ValidationError(
                f"unknown model {value!r}; see GET /v1/engines/all-models"
            )
        return value

    def validate_refiner_model_name(self, value: str) -> str:
        if value != options.NO_MODEL and not self.catalog.model_available("checkpoints", value):
            raise serializers.ValidationError(f"unknown refiner model {value!r}")
        return value

    def validate_vae_name(self, value: str) -> str:
        if value != options.DEFAULT_VAE and not self.catalog.model_available("vae", value):
            raise serializers.ValidationError(f"unknown VAE {value!r}")
        return value

    def validate_loras(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for lora in value:
            name = lora["model_name"]
            if name != options.NO_MODEL and not self.catalog.model_available("loras", name):
                errors.append({"model_name": [f"unknown LoRA {name!r}"]})
            else:
                errors.append({})
        if any(errors):
            raise serializers.ValidationError(errors)
        return value

    def validate_preset(self, value: str) -> str:
        if value != "initial" and value not in self.catalog.presets():
            raise serializers.ValidationError(f"unknown preset {value!r}")
        return value

    # Cross-field checks -------------------------------------------------------------------
    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A mode asked for without its image must not silently become text-to-image.
        if attrs["uov_method"] != "Disabled" and attrs.get("uov_input_image") is None:
            raise serializers.ValidationError(
                {"uov_input_image": f"uov_method {attrs['uov_method']!r} needs an input image"}
            )
        if attrs["outpaint_selections"] and attrs.get("inpaint_input_image") is None:
            raise serializers.ValidationError(
                {"inpaint_input_image": "outpaint_selections need an input image"}
            )
        if (
            attrs.get("inpaint_mask_image_upload") is not None
            and attrs.get("inpaint_input_image") is None
        ):
            raise serializers.ValidationError(
                {"inpaint_input_image": "a mask was given without the image to inpaint"}
            )
        validate_enhance(attrs)
        self._check_cost(attrs)
        if attrs["canny_low_threshold"] > attrs["canny_high_threshold"]:
            raise serializers.ValidationError(
                {"canny_low_threshold": "must not be above canny_high_threshold"}
            )
        return attrs

    @staticmethod
    def _check_cost(attrs: dict[str, Any]) -> None:
        """The operator's caps on steps and output size (a public server's GPU budget)."""
        steps = attrs["overwrite_step"]
        if steps == -1:
            steps = options.PERFORMANCES[attrs["performance_selection"]].steps
        if steps > settings.FOOOCUS_MAX_STEPS:
            field = "overwrite_step" if attrs["overwrite_step"] != -1 else "performance_selection"
            raise serializers.ValidationError(
                {field: f"{steps} steps; this server allows at most {settings.FOOOCUS_MAX_STEPS}"}
            )
        width, height = parse_aspect_ratio(attrs["aspect_ratios_selection"])
        width = attrs["overwrite_width"] if attrs["overwrite_width"] > 0 else width
        height = attrs["overwrite_height"] if attrs["overwrite_height"] > 0 else height
        if width * height > settings.FOOOCUS_MAX_OUTPUT_PIXELS:
            field = (
                "overwrite_width"
                if attrs["overwrite_width"] > 0 or attrs["overwrite_height"] > 0
                else "aspect_ratios_selection"
            )
            raise serializers.ValidationError(
                {
                    field: f"{width}x{height} is larger than this server's "
                    f"{settings.FOOOCUS_MAX_OUTPUT_PIXELS} output pixels"
                }
            )


class TaskQuerySerializer(serializers.Serializer):
    """``GET /tasks`` query parameters."""

    query = serializers.ChoiceField(choices=["all", "history", "current", "pending"], default="all")
    page = serializers.IntegerField(default=0, min_value=0)
    page_size = serializers.IntegerField(default=10, min_value=1, max_value=100)
    start_at = serializers.CharField(required=False, allow_blank=True, default="")
    end_at = serializers.CharField(required=False, allow_blank=True, default="")
    action = serializers.ChoiceField(choices=["", "delete"], required=False, default="")

    def _moment(self, value: str) -> Any:
        if not value:
            return None
        text = value.strip()
        # An unencoded "+08:00" in a query string arrives as " 08:00".
        text = re.sub(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$", r"\1+\2", text)
        parsed = parse_datetime(text)
        if parsed is None:
            raise serializers.ValidationError("must be an ISO 8601 date-time")
        if timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
        return parsed

    def validate_start_at(self, value: str) -> Any:
        return self._moment(value)

    def validate_end_at(self, value: str) -> Any:
        return self._moment(value)

    def validate_action(self, value: str) -> str:
        return value.lower()

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "get") and isinstance(data.get("action"), str):
            data = data.copy()
            data["action"] = data["action"].lower()
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start_at"), attrs.get("end_at")
        if start is not None and end is not None and start > end:
            raise serializers.ValidationError({"end_at": "must not be before start_at"})
        if start is not None and end is None:
            # "Until now": a start in the future simply selects nothing.
            attrs["end_at"] = max(start, timezone.now())
        if attrs["action"] == "delete" and start is None:
            raise serializers.ValidationError(
                {"start_at": "a time range is required to delete; nothing was deleted"}
            )
        return attrs
