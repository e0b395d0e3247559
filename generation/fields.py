"""The generate request's fields: the engine's request type plus one rename table.

The source is :class:`engine.types.EngineRequest`: its fields and defaults. The API (FooocusAPI's
flat body) uses the same name and default for most of them; :data:`API_FIELDS` lists every API
field that differs, and nothing else: renamed, given another default, known under older
Fooocus-API names, or read by the server rather than the engine. Everything else derives:

- the serializer's engine-backed fields take their defaults from :func:`api_default` (they are
  declared without one; ``GenerateRequestSerializer`` fills them in);
- stored ``req_params`` become an engine request through :data:`API_TO_ENGINE`;
- a 422 about an engine field names the API field through :func:`api_name`;
- older names are renamed on input through :data:`LEGACY_NAMES`.

The older Fooocus-API names are more rows (or more ``legacy`` names on a row); structural
differences of the older bodies (``advanced_params`` nesting, ``input_image`` for either image,
the four outpaint distances) are handled in :func:`generation.params.normalize_legacy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from engine import options
from engine.types import EngineRequest, ImagePromptSpec, LoraSpec


class _FromEngine:
    def __repr__(self) -> str:
        return "FROM_ENGINE"


FROM_ENGINE: Final = _FromEngine()
"""A row's default when it is the engine field's own."""


@dataclass(frozen=True)
class ApiField:
    """One API field that is not simply an engine field under the same name and default.

    ``engine``: the :class:`EngineRequest` field it becomes, or None when the server reads it
    (``used_by`` then says where). ``default``: the API's default when it differs from the
    engine's. ``legacy``: older Fooocus-API names accepted for it.
    """

    api: str
    engine: str | None
    default: Any = FROM_ENGINE
    legacy: tuple[str, ...] = ()
    used_by: str = ""


API_FIELDS: tuple[ApiField, ...] = (
    # Engine fields under another name or with another default.
    ApiField("image_seed", "seed", default=-1, used_by="-1 is random, resolved when queued"),
    ApiField("base_model_name", "base_model_name", default="", used_by="the preset names it"),
    ApiField("style_selections", "style_selections", default=list(options.DEFAULT_STYLES)),
    ApiField("inpaint_mask_image_upload", "inpaint_mask_image", legacy=("input_mask",)),
    ApiField("controlnet_image", "image_prompts", legacy=("image_prompts",)),
    ApiField("upscale_multiple", "upscale_multiple", legacy=("upscale_value",)),
    ApiField("metadata_scheme", "metadata_scheme", legacy=("meta_scheme",)),
    # Read by the server, not the engine.
    ApiField("aspect_ratios_selection", None, used_by="width and height of the engine request"),
    ApiField("overwrite_width", None, used_by="width of the engine request when > 0"),
    ApiField("overwrite_height", None, used_by="height of the engine request when > 0"),
    ApiField("preset", None, used_by="fills unsent fields before validation"),
    ApiField("generate_image_grid", None, used_by="the worker saves a grid of the batch"),
    ApiField(
        "save_metadata_to_images",
        None,
        legacy=("save_meta",),
        used_by="the worker embeds the metadata",
    ),
    ApiField("output_format", None, legacy=("save_extension",), used_by="the worker's file format"),
    ApiField("save_name", None, used_by="the worker's file names"),
    ApiField("require_base64", None, used_by="task objects carry result_base64"),
    ApiField("async_process", None, used_by="the generate consumer's answer mode"),
    ApiField("stream_output", None, used_by="the generate consumer's answer mode"),
    ApiField("webhook_url", None, used_by="the task's webhook"),
    ApiField("webhook_events", None, used_by="the task's webhook"),
    # Enhance: one engine field (``enhance``, an EnhanceSpec) built from these by
    # generation.tools.enhance_fields.enhance_spec_from_params.
    *(
        ApiField(name, None, used_by="the engine request's enhance spec")
        for name in (
            "enhance_checkbox",
            "enhance_input_image",
            "enhance_uov_method",
            "enhance_uov_processing_order",
            "enhance_uov_prompt_type",
            "enhance_ctrls",
            "save_final_enhanced_image_only",
            "debugging_enhance_masks_checkbox",
            "debugging_dino",
            "dino_erode_or_dilate",
        )
    ),
    ApiField(
        "inpaint_advanced_masking_checkbox",
        None,
        used_by="compatibility: refused when set without an uploaded mask (generation.unsupported)",
    ),
    # Accepted for compatibility and not read (API.md: the server decides from the images).
    ApiField("input_image_checkbox", None, used_by="compatibility: FooocusAPI forces it true"),
    ApiField("current_tab", None, used_by="compatibility: decided from the images given"),
    ApiField(
        "inpaint_mask_upload_checkbox",
        None,
        used_by="compatibility: an uploaded mask is always used",
    ),
    ApiField(
        "disable_intermediate_results",
        None,
        used_by="compatibility: each finished image is saved and listed as soon as it exists",
    ),
    ApiField(
        "mixing_image_prompt_and_vary_upscale",
        None,
        used_by="compatibility: image prompts always apply together with upscale/vary",
    ),
    ApiField(
        "mixing_image_prompt_and_inpaint",
        None,
        used_by="compatibility: image prompts always apply together with inpaint",
    ),
)

ENGINE_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(EngineRequest)
}

DERIVED: dict[str, str] = {
    "width": "aspect_ratios_selection",
    "height": "aspect_ratios_selection",
    "performance_lora_name": "preset",
    "enhance": "enhance_checkbox",
}
"""Engine fields computed from API fields rather than copied (and the API field to blame)."""

ERROR_FIELDS: dict[str, str] = {"steps": "overwrite_step"}
"""Names the engine's errors use that are not request fields, and the API field to blame."""

_ROWS: dict[str, ApiField] = {row.api: row for row in API_FIELDS}
_RENAMED_ENGINE = {row.engine for row in API_FIELDS if row.engine is not None}

API_TO_ENGINE: dict[str, str] = {
    **{
        name: name
        for name in ENGINE_FIELDS
        if name not in DERIVED and name not in _RENAMED_ENGINE and name not in _ROWS
    },
    **{row.api: row.engine for row in API_FIELDS if row.engine is not None},
}
"""Every API field that becomes an engine field, with the engine's name."""

ENGINE_TO_API: dict[str, str] = {engine: api for api, engine in API_TO_ENGINE.items()}

SERVER_FIELDS: frozenset[str] = frozenset(row.api for row in API_FIELDS if row.engine is None)
"""API fields the server reads (the engine never sees them)."""

LEGACY_NAMES: dict[str, str] = {old: row.api for row in API_FIELDS for old in row.legacy}
"""Older Fooocus-API name -> API name (used when only the old name is sent)."""

NESTED_FIELDS: dict[str, tuple[type, dict[str, str]]] = {
    "loras": (LoraSpec, {"model_name": "model_name", "weight": "weight", "enabled": "enabled"}),
    "controlnet_image": (
        ImagePromptSpec,
        {"cn_img": "image", "cn_type": "cn_type", "cn_stop": "stop", "cn_weight": "weight"},
    ),
}
"""List fields of objects: the engine type of an item and its API -> engine field names."""


def api_name(engine_field: str) -> str:
    """The API field a message about ``engine_field`` names (an engine error's ``field``)."""
    return (
        ENGINE_TO_API.get(engine_field)
        or DERIVED.get(engine_field)
        or ERROR_FIELDS.get(engine_field, engine_field)
    )


def _as_api_value(value: Any) -> Any:
    # Tuples are JSON lists in the API; an empty one becomes a fresh list each time.
    if isinstance(value, tuple):
        return list(value) if value else list
    return value


def api_default(name: str) -> Any:
    """The API default of ``name``: its row's, else the engine field's own.

    ``dataclasses.MISSING`` for a field with no default here (a server field, whose default the
    serializer declares, or an engine field without one). ``list`` (the callable) means an empty
    list, as DRF reads defaults.
    """
    row = _ROWS.get(name)
    if row is not None and row.default is not FROM_ENGINE:
        return row.default
    engine = API_TO_ENGINE.get(name)
    if engine is None:
        return dataclasses.MISSING
    return _as_api_value(ENGINE_FIELDS[engine].default)


def nested_default(api_list_field: str, name: str) -> Any:
    """The default of item field ``name`` of a list field (``loras``, ``controlnet_image``):
    its engine spec field's, or ``dataclasses.MISSING`` (required, or the field's own)."""
    spec_type, names = NESTED_FIELDS[api_list_field]
    for spec_field in dataclasses.fields(spec_type):
        if spec_field.name == names[name]:
            return _as_api_value(spec_field.default)
    raise KeyError(name)


def engine_values(params: dict[str, Any], convert: Callable[[str, Any], Any]) -> dict[str, Any]:
    """Engine field -> value for every API field present in ``params`` (renamed by the table).

    ``convert(engine_field, value)`` turns an API value into the engine's (images, nested items);
    list values of tuple fields become tuples.
    """
    values: dict[str, Any] = {}
    for api, engine in API_TO_ENGINE.items():
        if api not in params:
            continue
        value = convert(engine, params[api])
        if isinstance(ENGINE_FIELDS[engine].default, tuple) and isinstance(value, list):
            value = tuple(value)
        values[engine] = value
    return values
