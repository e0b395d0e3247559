"""Image-prompt preprocessors (reference §9): the maps the ControlNets see and the CLIP crops.

PyraCanny finds edges at nine scales and blends them coarse to fine, so long structure lines
survive while texture noise (which only fires at full scale) is damped. CPDS keeps the image's
contrast structure without its colours: a contrast-preserving grey plus how far each pixel's
colour is from OpenCV's colour boost. Both are stretched between percentiles to uint8 and
returned as three-channel images (the ControlNet hint format).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from engine.imaging import resize, to_rgb

PYRAMID_SCALES: tuple[float, ...] = tuple(k / 10 for k in range(2, 11))  # 0.2 .. 1.0
PYRAMID_KEEP = 0.75  # weight of the coarser accumulated edges at each finer scale
CANNY_PERCENTILES = (1.0, 99.0)
CPDS_BLUR_SIGMA = 0.8
CPDS_PERCENTILES = (4.0, 96.0)
CLIP_SIZE = 224


def fit_cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` to cover ``width`` x ``height`` and centre-crop it to exactly that size."""
    image = to_rgb(image)
    scale = max(width / image.width, height / image.height)
    scaled_w = max(width, round(image.width * scale))
    scaled_h = max(height, round(image.height * scale))
    scaled = resize(image, scaled_w, scaled_h)
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _stretch(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the low..high percentile range of ``values`` onto 0..255 (uint8, clipped)."""
    low, high = np.percentile(values, percentiles)
    span = max(float(high - low), 1e-5)
    scaled = (values.astype(np.float64) - low) / span
    return (np.clip(scaled, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _gray_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(values[:, :, None], 3, axis=2))


def pyramid_canny_map(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """Edge strength [H, W] in float of an RGB uint8 array, before the percentile stretch.

    Each channel is edge-detected separately at every scale of :data:`PYRAMID_SCALES`
    (INTER_AREA downscale); the running result is resized up to the next scale and blended as
    ``0.75·previous + 0.25·current``. The channels are summed at the end.
    """
    height, width = rgb.shape[:2]
    accumulated: np.ndarray | None = None
    for scale in PYRAMID_SCALES:
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        edges = np.stack(
            [cv2.Canny(np.ascontiguousarray(small[:, :, c]), low, high) for c in range(3)],
            axis=2,
        ).astype(np.float32)
        if accumulated is None:
            accumulated = edges
        else:
            previous = cv2.resize(accumulated, size, interpolation=cv2.INTER_LINEAR)
            accumulated = PYRAMID_KEEP * previous + (1.0 - PYRAMID_KEEP) * edges
    assert accumulated is not None
    return np.asarray(accumulated.sum(axis=2))


def pyramid_canny(image: Image.Image, low: int, high: int) -> Image.Image:
    """The PyraCanny hint of ``image`` (already at the generation size)."""
    edges = pyramid_canny_map(np.asarray(to_rgb(image)), low, high)
    return _gray_rgb(_stretch(edges, CANNY_PERCENTILES))


def cpds(image: Image.Image) -> Image.Image:
    """The CPDS hint of ``image``: decolourised grey + distance to the colour boost, stretched."""
    rgb = np.asarray(to_rgb(image))
    blurred = cv2.GaussianBlur(rgb, (0, 0), CPDS_BLUR_SIGMA)
    # OpenCV's photo functions expect BGR; the channel order only matters for the boost.
    bgr = np.ascontiguousarray(blurred[:, :, ::-1])
    gray, boost = cv2.decolor(bgr)
    distance = np.linalg.norm(bgr.astype(np.float32) - boost.astype(np.float32), axis=2)
    values = gray.astype(np.float32) + distance
    return _gray_rgb(_stretch(values, CPDS_PERCENTILES))


def clip_input(image: Image.Image, size: int = CLIP_SIZE) -> Image.Image:
    """Stretch to ``size`` x ``size`` with Lanczos (no aspect-preserving crop, as Fooocus)."""
    return resize(to_rgb(image), size, size)
