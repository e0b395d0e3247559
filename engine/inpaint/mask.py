"""Inpaint and outpaint on the pixel side (reference §8.1-8.3, §8.4 paste-back).

The mask is prepared like Fooocus does (resize, threshold, erode/dilate, invert), outpaint pads
the image by replicating its edges, the region of interest around the mask is cropped and resized
to the model's native size, the hole is pre-filled by repeated box blurs for a full denoise, and
the result is pasted back through a feathered mask so that pixels away from the mask keep their
exact original values. Sizes Fooocus states for SDXL scale with the model's native side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from engine.imaging import fit_shape_ceil, resize, shape_ceil, size_unit, to_rgb
from engine.masks import prepare_mask
from engine.types import EngineInputError, EngineRequest

OUTPAINT_FRACTION = 0.3
REGION_MARGIN = 1.15
# (radius at SDXL size, passes) of the fill's box blurs, coarse to fine.
FILL_BLURS: tuple[tuple[int, int], ...] = (
    (512, 2),
    (256, 2),
    (128, 4),
    (64, 4),
    (33, 8),
    (15, 8),
    (5, 16),
    (3, 16),
)
FEATHER_ROUNDS = 32  # at SDXL size
FEATHER_STEP = 8


def outpaint_pads(request: EngineRequest, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels to add: the asked distance, or 30% of the side."""
    chosen = {d.lower() for d in request.outpaint_selections}
    left, top, right, bottom = request.outpaint_distance
    pad_top = (top or int(height * OUTPAINT_FRACTION)) if "top" in chosen else 0
    pad_bottom = (bottom or int(height * OUTPAINT_FRACTION)) if "bottom" in chosen else 0
    # Fooocus grows top/bottom first, then left/right by 30% of the width (unchanged by that).
    pad_left = (left or int(width * OUTPAINT_FRACTION)) if "left" in chosen else 0
    pad_right = (right or int(width * OUTPAINT_FRACTION)) if "right" in chosen else 0
    return pad_left, pad_top, pad_right, pad_bottom


def outpaint(
    image: np.ndarray, mask: np.ndarray, pads: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Grow ``image`` (edge replicated) and ``mask`` (new pixels 255) by ``pads``."""
    left, top, right, bottom = pads
    if not any(pads):
        return image, mask
    grown = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="edge")
    grown_mask = np.pad(mask, ((top, bottom), (left, right)), constant_values=255)
    return grown, grown_mask


def region_of_interest(mask: np.ndarray, k: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the crop around the mask's bounding box (§8.3): a square
    1.15 times the box, then grown until it covers ``k`` of each side of the image."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask > 0)
    if len(ys) == 0:
        return 0, height, 0, width
    a, b, c, d = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    cy, cx = (a + b) / 2.0, (c + d) / 2.0
    half = max(b - a, d - c) / 2.0 * REGION_MARGIN
    a, b = max(0, int(cy - half)), min(height, int(cy + half) + 1)
    c, d = max(0, int(cx - half)), min(width, int(cx + half) + 1)
    want_h, want_w = k * height, k * width
    while (b - a < want_h and (a > 0 or b < height)) or (d - c < want_w and (c > 0 or d < width)):
        if b - a < want_h:
            a, b = max(0, a - 1), min(height, b + 1)
        if d - c < want_w:
            c, d = max(0, c - 1), min(width, d + 1)
    return a, b, c, d


def fill_hole(image: np.ndarray, mask: np.ndarray, native: int) -> np.ndarray:
    """Fooocus's fill: blur the whole crop repeatedly, keeping the known pixels after each pass,
    so the hole takes the surrounding colours (radii scaled to the model size)."""
    known = mask <= 127
    current = image.copy()
    for radius, passes in FILL_BLURS:
        r = max(1, round(radius * native / 1024))
        for _ in range(passes):
            blurred = np.asarray(Image.fromarray(current).filter(ImageFilter.BoxBlur(r)))
            current = np.where(known[..., None], image, blurred)
    return current


def feather(mask: np.ndarray, native: int) -> np.ndarray:
    """Paste-back weights in 0..1: the mask (> 127) grown by a soft outward ramp of
    FEATHER_ROUNDS px (scaled), falling by FEATHER_STEP/255 per pixel; 0 far from the mask."""
    rounds = max(1, round(FEATHER_ROUNDS * native / 1024))
    step = FEATHER_STEP * FEATHER_ROUNDS / rounds
    value = np.where(mask > 127, 256.0, 0.0).astype(np.float32)
    for _ in range(rounds):
        grown = np.asarray(Image.fromarray(value).filter(ImageFilter.MaxFilter(3)))
        value = np.maximum(value, grown - step)
    return np.clip(value / 255.0, 0.0, 1.0)


@dataclass
class InpaintInput:
    """A prepared inpaint task: the full (outpainted) image and mask, the crop box, and the crop
    (resized to the generation size) with its fill and mask."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    crop: Image.Image
    crop_fill: Image.Image
    crop_mask: np.ndarray
    denoise: float


def prepare_inpaint(
    request: EngineRequest,
    native: int,
    super_resolve: Callable[[Image.Image], Image.Image],
) -> InpaintInput:
    """Mask, outpaint, crop and resize one inpaint request for a model of side ``native``."""
    assert request.inpaint_input_image is not None
    source = to_rgb(request.inpaint_input_image)
    image = np.asarray(source).copy()
    mask = prepare_mask(request, source.size)
    pads = outpaint_pads(request, source.width, source.height)
    image, mask = outpaint(image, mask, pads)
    if not (mask > 127).any():
        raise EngineInputError("inpaint_mask_image", "the mask has no white pixels")
    denoise, field = request.inpaint_strength, request.inpaint_respective_field
    if any(pads):
        denoise, field = 1.0, 1.0
    box = region_of_interest(mask, field)
    a, b, c, d = box
    crop = Image.fromarray(image[a:b, c:d])
    unit = size_unit(native)
    if shape_ceil(crop.width, crop.height, unit) < native:
        crop = super_resolve(crop)
    width, height = fit_shape_ceil(crop.width, crop.height, native, unit)
    crop = resize(crop, width, height)
    small = Image.fromarray(mask[a:b, c:d]).resize((width, height), Image.Resampling.BILINEAR)
    crop_mask = np.where(np.asarray(small) > 127, 255, 0).astype(np.uint8)
    crop_array = np.asarray(crop)
    fill = fill_hole(crop_array, crop_mask, native) if denoise > 0.99 else crop_array
    return InpaintInput(image, mask, box, crop, Image.fromarray(fill), crop_mask, denoise)


def paste_back(prepared: InpaintInput, generated: Image.Image, native: int) -> Image.Image:
    """Put the generated crop back into the full image through the feathered mask; pixels with
    zero weight are copied from the (outpainted) original unchanged."""
    a, b, c, d = prepared.box
    full = prepared.image.astype(np.float32)
    placed = full.copy()
    placed[a:b, c:d] = np.asarray(resize(generated, d - c, b - a), dtype=np.float32)
    weight = feather(prepared.mask, native)[..., None]
    blended = np.clip(np.round(placed * weight + full * (1.0 - weight)), 0, 255).astype(np.uint8)
    result = np.where(weight > 0, blended, prepared.image)
    return Image.fromarray(result.astype(np.uint8))


def inpaint_prompt(request: EngineRequest) -> str:
    """The prompt with ``inpaint_additional_prompt`` as its first line (Fooocus's rule)."""
    extra = request.inpaint_additional_prompt.strip()
    if not extra:
        return request.prompt
    return f"{extra}\n{request.prompt}" if request.prompt else extra
