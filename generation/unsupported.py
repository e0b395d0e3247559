"""FooocusAPI request fields this server does not implement yet.

FooocusAPI's ``CommonRequest`` has them; a client that sets one expects its effect, so a value
other than the field's default is a 422 naming the field instead of a silent no-op. Sending the
default (as clients that dump a whole request model do) is fine. Unknown names stay ignored.

When a feature lands, delete its rows here: that is the whole refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

NO_IMAGE = {"", "none", "null"}
_FALSE = {"false", "0", "no", "off"}

# field -> (FooocusAPI's default, the feature it belongs to)
UNSUPPORTED_FIELDS: dict[str, tuple[Any, str]] = {
    "inpaint_advanced_masking_checkbox": (False, "inpaint mask generation (SAM/DINO)"),
}


def _same_as_default(value: Any, default: Any) -> bool:
    if value is None:
        return True
    if default is None:  # an image field: any "no image" spelling
        return isinstance(value, str) and value.strip().lower() in NO_IMAGE
    if isinstance(default, bool):
        return value is False or (isinstance(value, str) and value.strip().lower() in _FALSE)
    if isinstance(default, list):
        # Enhance tabs that are all switched off do nothing.
        return isinstance(value, list) and all(
            isinstance(tab, Mapping) and not tab.get("enhance_enabled") for tab in value
        )
    if isinstance(default, int):
        try:
            return float(value) == default
        except (TypeError, ValueError):
            return False
    return bool(value == default)


def _mask_given(data: Mapping[str, Any]) -> bool:
    mask = data.get("inpaint_mask_image_upload")
    return isinstance(mask, str) and mask.strip().lower() not in NO_IMAGE


# Non-default values that still mean what this server does: FooocusAPI itself sets
# inpaint_advanced_masking_checkbox to true exactly when a mask is uploaded.
_HARMLESS: dict[str, Callable[[Any, Mapping[str, Any]], bool]] = {
    "inpaint_advanced_masking_checkbox": lambda _value, data: _mask_given(data),
}


def unsupported_field_errors(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """The 422 errors for fields set to a value this server cannot honour yet ({} when none)."""
    errors: dict[str, list[str]] = {}
    for name, (default, feature) in UNSUPPORTED_FIELDS.items():
        if name not in data or _same_as_default(data[name], default):
            continue
        harmless = _HARMLESS.get(name)
        if harmless is not None and harmless(data[name], data):
            continue
        errors[name] = [
            f"{feature} is not implemented on this server yet; leave {name} at its default "
            f"({default!r}) or leave it out"
        ]
    return errors
