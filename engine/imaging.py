"""Pixel-side helpers of the image-input features: Fooocus's size rules, resizing, tiling.

Fooocus states its sizes for SDXL (fit to a "shape ceil" of 1024, sides multiples of 64, VAE tiles
of 512 px). Here every such size is a fraction of the base model's native side, so the tiny demo
model (native 64) runs the very same rules: ``unit`` is native/16 (64 for SDXL) but never below
the VAE's factor of 8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch
from PIL import Image

SDXL_NATIVE = 1024
LATENT_SCALE = 8


def size_unit(native: int) -> int:
    """The rounding unit of generation sides: 64 for SDXL, never finer than the VAE's 8 px."""
    return max(LATENT_SCALE, native * 64 // SDXL_NATIVE)


def scaled_size(native: int, sdxl_pixels: float) -> float:
    """A size Fooocus states for SDXL (1024, 2048, 2800 ...) for a model of side ``native``."""
    return sdxl_pixels * native / SDXL_NATIVE


def shape_ceil(width: int, height: int, unit: int) -> int:
    """ceil(sqrt(W·H) / unit) · unit: Fooocus's measure of an image's size."""
    return math.ceil(math.sqrt(width * height) / unit) * unit


def fit_shape_ceil(width: int, height: int, target: int, unit: int) -> tuple[int, int]:
    """Sides (multiples of ``unit``, keeping the aspect) whose shape ceil is ``target``.

    The sides are scaled by target/current and re-rounded until the measure settles, as Fooocus
    does; a few rounds suffice.
    """
    w, h = float(width), float(height)
    best = (max(unit, round(w / unit) * unit), max(unit, round(h / unit) * unit))
    for _ in range(32):
        current = shape_ceil(int(w), int(h), unit)
        if current == target:
            break
        k = target / math.sqrt(w * h)
        w, h = w * k, h * k
        best = (max(unit, round(w / unit) * unit), max(unit, round(h / unit) * unit))
        w, h = float(best[0]), float(best[1])
    return best


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (as Fooocus reads uploads)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Lanczos resize (no-op when the size already matches)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def crop_to_multiple(image: Image.Image, multiple: int = LATENT_SCALE) -> Image.Image:
    """Centre crop so both sides are multiples of ``multiple`` (what the VAE can encode)."""
    width, height = image.size
    new_w, new_h = width // multiple * multiple, height // multiple * multiple
    if (new_w, new_h) == (width, height):
        return image
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return image.crop((left, top, left + new_w, top + new_h))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor [1, 3, H, W] in 0..1."""
    array = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    """Float tensor [1, 3, H, W] in 0..1 -> RGB image (rounded, clamped)."""
    array = (pixels[0].float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``length`` with full ``tile``-sized windows overlapping by at least
    ``overlap`` (the last one ends at the border)."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(size: int, overlap: int) -> torch.Tensor:
    """Weights rising over ``overlap`` values at both ends, so overlapping windows cross-fade."""
    index = torch.arange(size, dtype=torch.float32)
    ramp = torch.minimum(index + 1, size - index) / float(max(overlap, 1))
    return ramp.clamp(max=1.0)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: Fraction,
) -> torch.Tensor:
    """``fn`` over ``tile``-sized windows of ``x`` [1, C, H, W], blended into one output.

    ``fn`` maps an (h, w) window to (h·scale, w·scale) (a VAE encoder: 1/8, a decoder: 8, an
    ESRGAN: 4). Windows overlap by ``overlap`` input pixels and are cross-faded with linear ramps.
    """
    _, _, height, width = x.shape
    out: torch.Tensor | None = None
    total = torch.zeros(
        (1, 1, int(height * scale), int(width * scale)), dtype=torch.float32, device=x.device
    )
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            result = fn(x[:, :, top : top + tile, left : left + tile]).float()
            h, w = result.shape[-2:]
            ramp = int(overlap * scale)
            weight = _ramp(h, ramp)[:, None] * _ramp(w, ramp)[None, :]
            weight = weight.to(result.device)
            if out is None:
                out = torch.zeros(
                    (1, result.shape[1], *total.shape[-2:]),
                    dtype=torch.float32,
                    device=result.device,
                )
            y, z = int(top * scale), int(left * scale)
            out[:, :, y : y + h, z : z + w] += result * weight
            total[:, :, y : y + h, z : z + w] += weight
    assert out is not None
    return out / total.clamp(min=1e-8)
