"""Upscale or Vary (reference §7): the size rules and what the sampler starts from.

Vary fits the image to a shape ceil between native and 2·native and re-noises it part-way
(0.5 Subtle, 0.85 Strong). Upscale super-resolves with the ESRGAN model, resizes to the asked
factor (at least native size), and re-noises it lightly (0.382) — unless the result is too large
to diffuse (shape ceil over 2800 for SDXL), when the super-resolved image is the answer. "Fast 2x"
never diffuses. Partial denoise is the tail of a longer schedule (:func:`tail_sigmas`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from engine.imaging import fit_shape_ceil, resize, scaled_size, shape_ceil, size_unit, to_rgb
from engine.options import (
    CUSTOM_UPSCALE,
    FAST_UPSCALE,
    PERFORMANCES,
    UPSCALE_FACTORS,
    VARY_STRENGTHS,
    is_vary,
)
from engine.types import EngineRequest

UPSCALE_STRENGTH = 0.382
VARY_MIN, VARY_MAX = 1024, 2048  # shape-ceil bounds of Vary, for SDXL
UPSCALE_DIRECT_ABOVE = 2800  # shape ceil above which Upscale returns the super-resolved image


def upscale_factor(request: EngineRequest) -> float:
    """The factor an Upscale request asks for (``upscale_multiple`` for Custom)."""
    if request.uov_method == CUSTOM_UPSCALE:
        return float(request.upscale_multiple)
    return UPSCALE_FACTORS[request.uov_method]


@dataclass(frozen=True)
class UovInput:
    """What an Upscale/Vary request runs on.

    ``denoise`` None means no diffusion at all: ``image`` is the answer (Fast 2x, or too large).
    Otherwise the sampler runs ``steps`` steps at ``denoise`` from ``image`` (sides multiples of 8
    after the VAE crop).
    """

    image: Image.Image
    denoise: float | None
    steps: int
    tiled: bool


def prepare_uov(
    request: EngineRequest,
    native: int,
    plan_steps: int,
    super_resolve: Callable[[Image.Image], Image.Image],
) -> UovInput:
    """Apply the Vary/Upscale size rules to ``request.uov_input_image`` for a model of side
    ``native``; ``super_resolve`` is the upscaler (only called for Upscale)."""
    assert request.uov_input_image is not None
    image = to_rgb(request.uov_input_image)
    unit = size_unit(native)
    method = request.uov_method
    if is_vary(method):
        denoise = VARY_STRENGTHS[method]
        if request.overwrite_vary_strength > 0:
            denoise = float(request.overwrite_vary_strength)
        ceil = shape_ceil(*image.size, unit)
        low, high = int(scaled_size(native, VARY_MIN)), int(scaled_size(native, VARY_MAX))
        if ceil < low or ceil > high:
            width, height = fit_shape_ceil(*image.size, low if ceil < low else high, unit)
            image = resize(image, width, height)
        return UovInput(image, denoise, plan_steps, tiled=False)

    factor = upscale_factor(request)
    enlarged = super_resolve(image)
    width, height = image.size
    target = (int(width * factor), int(height * factor))
    if method == FAST_UPSCALE:
        return UovInput(resize(enlarged, *target), None, 0, tiled=False)
    ceil = shape_ceil(*target, unit)
    low = int(scaled_size(native, VARY_MIN))
    if ceil < low:
        target = fit_shape_ceil(*target, low, unit)
        ceil = shape_ceil(*target, unit)
    result = resize(enlarged, *target)
    if ceil > scaled_size(native, UPSCALE_DIRECT_ABOVE):
        return UovInput(result, None, 0, tiled=False)
    denoise = UPSCALE_STRENGTH
    if request.overwrite_upscale_strength > 0:
        denoise = float(request.overwrite_upscale_strength)
    steps = plan_steps
    if request.overwrite_step <= 0:
        steps = PERFORMANCES[request.performance_selection].steps_uov
    return UovInput(result, denoise, steps, tiled=True)


def direct_metadata(request: EngineRequest, prepared: UovInput) -> dict[str, object]:
    """The metadata of an upscale answered without diffusion: the factor actually applied."""
    assert request.uov_input_image is not None
    factor = f"{prepared.image.width / request.uov_input_image.width:g}x"
    return {"upscale_fast": factor, "metadata_text": json.dumps({"upscale_fast": factor})}


def tail_sigmas(full: Callable[[int], list[float]], steps: int, denoise: float) -> list[float]:
    """The last ``steps`` + 1 sigmas of the int(steps / denoise)-step schedule ``full(n)``:
    partial denoise always runs ``steps`` model steps, at the low-noise end (§2.3)."""
    if denoise >= 1.0:
        return full(steps)
    longer = full(int(steps / denoise))
    return longer[-(steps + 1) :]
