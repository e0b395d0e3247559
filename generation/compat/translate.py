"""Fooocus-API request bodies (JSON, or v1's multipart forms) -> FooocusAPI's generate body.

The result goes through the same validation and queueing as ``POST /v1/engine/generate/``; a 422
found there is reported under the name the client sent (``relocate``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rest_framework.exceptions import ErrorDetail, ValidationError

from generation.compat.fields import (
    DEFAULTS,
    DROPPED,
    ENHANCE_DEFAULTS,
    ENHANCE_TABS,
    IMAGE_PROMPT_KEYS,
    IMAGE_PROMPT_SLOTS,
    INPUT_IMAGE_BY_ROUTE,
    NESTED,
    OUTPAINT_DISTANCES,
    RENAMES,
    ROUTE_FOREIGN,
    Route,
)
from generation.unsupported import UNSUPPORTED_FIELDS

NO_IMAGE = {"", "none", "null", "string"}
# Form fields that carry a JSON document, and form fields that are comma-separated lists.
FORM_JSON_FIELDS = ("loras", NESTED, "enhance_ctrlnets")
FORM_LIST_FIELDS = ("style_selections", "outpaint_selections")
_ZERO = {"0", "0.0", ""}
_ENHANCE_TAB_FIELD = re.compile(r"^(enhance_[a-z_]+)_([1-9])$")

Location = tuple[str | int, ...]


class FeatureNotImplemented(Exception):
    """A route whose feature this server does not have yet (answered 501)."""

    def __init__(self, feature: str, route: str) -> None:
        super().__init__(f"{feature} is not implemented on this server yet ({route})")
        self.feature = feature
        self.route = route


@dataclass
class Translated:
    """A FooocusAPI generate body and where each of its fields came from in the client's."""

    body: dict[str, Any]
    locations: dict[Location, Location] = field(default_factory=dict)

    def relocate(self, loc: list[Any]) -> list[Any]:
        """``["body", "uov_input_image"]`` -> ``["body", "input_image"]`` and the like."""
        if len(loc) < 2 or loc[0] != "body":
            return loc
        path = tuple(loc[1:])
        for size in range(len(path), 0, -1):
            origin = self.locations.get(path[:size])
            if origin is not None:
                return ["body", *origin, *path[size:]]
        return loc


def _error(name: str, message: str, code: str = "invalid") -> ValidationError:
    return ValidationError({name: [ErrorDetail(message, code=code)]})


def _no_image(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NO_IMAGE)


def _json_field(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(name, f"must be a JSON document: {exc}", "json_invalid") from exc


# Forms -------------------------------------------------------------------------------------
def form_data(post: Any, files: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A v1 multipart form as a Fooocus-API JSON body, and the form as shown back in a 422.

    ``post`` and ``files`` are Django's ``request.POST`` and ``request.FILES``. Files become
    base64 strings (the same path JSON clients take); an empty file part means no file.
    """
    data: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for key in post:
        values = post.getlist(key)
        shown[key] = values[-1] if len(values) == 1 else values
        if key in FORM_LIST_FIELDS:
            parts = [part.strip() for value in values for part in value.split(",")]
            data[key] = [part for part in parts if part]
            continue
        value = values[-1]
        if value == "":
            continue
        data[key] = value  # JSON-carrying fields are parsed by translate(), named in a 422
    for key in files:
        upload = files[key]
        content = upload.read()
        shown[key] = getattr(upload, "name", key)
        if content:
            data[key] = base64.b64encode(content).decode("ascii")
    tabs: list[dict[str, Any]] = [{} for _ in range(ENHANCE_TABS)]
    for key in list(data):
        match = _ENHANCE_TAB_FIELD.match(key)
        if match and 1 <= int(match.group(2)) <= ENHANCE_TABS:
            tabs[int(match.group(2)) - 1][match.group(1)] = data.pop(key)
    if any(tabs):
        data["enhance_ctrlnets"] = tabs
    if any(f"cn_img{i}" in data or f"cn_type{i}" in data for i in range(1, 5)):
        data["image_prompts"] = [
            {key: data.pop(f"{key}{i}") for key in IMAGE_PROMPT_KEYS if f"{key}{i}" in data}
            for i in range(1, IMAGE_PROMPT_SLOTS + 1)
        ]
    return data, shown


# Both kinds of body --------------------------------------------------------------------------
def _check_required(route: Route, data: Mapping[str, Any]) -> None:
    errors: dict[str, list[ErrorDetail]] = {}
    for name in route.required:
        if name not in data or (name == "input_image" and _no_image(data[name])):
            errors[name] = [ErrorDetail("Field required", code="missing")]
    if errors:
        raise ValidationError(errors)


def _distance(name: str, value: Any) -> int:
    if value is None or value == "":
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise _error(name, "must be an integer") from exc
    return max(number, 0)  # Fooocus-API's -1 = the default distance = our 0


def translate(route: Route, data: dict[str, Any], *, from_form: bool = False) -> Translated:
    """Map one Fooocus-API request onto FooocusAPI's generate body (see ``fields``)."""
    if route.enhance and "enhance_checkbox" in UNSUPPORTED_FIELDS:
        # Translated below once enhance exists (its rows leave generation/unsupported.py).
        raise FeatureNotImplemented("image enhance", route.path)
    _check_required(route, data)
    body = dict(data)
    out = Translated(body)
    locations = out.locations
    if from_form:
        for name in FORM_JSON_FIELDS:
            if isinstance(body.get(name), str):
                body[name] = _json_field(name, body[name])

    advanced = body.pop(NESTED, None)
    if isinstance(advanced, str):
        advanced = _json_field(NESTED, advanced) if advanced.strip() else None
    if advanced is not None and not isinstance(advanced, dict):
        raise _error(NESTED, "must be an object")
    for key, value in (advanced or {}).items():
        body[key] = value  # advanced_params wins, as in Fooocus-API
        locations[(key,)] = (NESTED, key)

    for name in DROPPED:
        body.pop(name, None)
    for old, new in RENAMES.items():
        if old in body:
            body[new] = body.pop(old)
            locations[(new,)] = locations.get((old,), (old,))
    if body.get("upscale_multiple") in (None, ""):
        body.pop("upscale_multiple", None)

    if "input_image" in body:
        value = body.pop("input_image")
        target = INPUT_IMAGE_BY_ROUTE.get(route.name)
        if target is not None:
            body[target] = value
            locations[(target,)] = ("input_image",)

    if any(name in body for name in OUTPAINT_DISTANCES):
        body["outpaint_distance"] = [
            _distance(name, body.pop(name, None)) for name in OUTPAINT_DISTANCES
        ]
        for index, name in enumerate(OUTPAINT_DISTANCES):
            locations[("outpaint_distance", index)] = (name,)
    if isinstance(body.get("outpaint_selections"), str):
        body["outpaint_selections"] = [
            part.strip() for part in body["outpaint_selections"].split(",") if part.strip()
        ]
    if isinstance(body.get("style_selections"), str):
        body["style_selections"] = [
            part.strip() for part in body["style_selections"].split(",") if part.strip()
        ]

    for name in ROUTE_FOREIGN.get(route.name, ()):
        body.pop(name, None)

    if "controlnet_image" in body:
        body["controlnet_image"] = _image_prompts(body["controlnet_image"], locations, from_form)

    if route.default_uov_method is not None:
        body.setdefault("uov_method", route.default_uov_method)
    if body.get("controlnet_image"):
        # Fooocus-API mixes image prompts with the route's own image by itself.
        if not _no_image(body.get("uov_input_image")):
            body["mixing_image_prompt_and_vary_upscale"] = True
        elif not _no_image(body.get("inpaint_input_image")):
            body["mixing_image_prompt_and_inpaint"] = True
    for name, value in DEFAULTS.items():
        body.setdefault(name, value)
    if route.enhance:
        for name, value in ENHANCE_DEFAULTS.items():
            body.setdefault(name, value)
    return out


def _image_prompts(
    slots: Any, locations: dict[Location, Location], from_form: bool
) -> list[dict[str, Any]]:
    """Keep the slots that carry an image; 0 or null stop/weight = the per-type default."""
    if not isinstance(slots, list):
        raise _error("image_prompts", "must be a list of image prompts")
    kept: list[dict[str, Any]] = []
    for index, slot in enumerate(slots):
        if not isinstance(slot, dict):
            raise ValidationError({"image_prompts": {str(index): ["must be an object"]}})
        if _no_image(slot.get("cn_img")):
            continue
        chosen = {key: slot[key] for key in IMAGE_PROMPT_KEYS if key in slot}
        for key in ("cn_stop", "cn_weight"):
            value = chosen.get(key)
            if value is None or value == 0 or (isinstance(value, str) and value.strip() in _ZERO):
                chosen.pop(key, None)
        position = len(kept)
        if from_form:
            for key in IMAGE_PROMPT_KEYS:
                locations[("controlnet_image", position, key)] = (f"{key}{index + 1}",)
        else:
            locations[("controlnet_image", position)] = ("image_prompts", index)
        kept.append(chosen)
    return kept
