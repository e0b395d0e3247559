"""The uploaded inpaint mask as pixels (numpy and PIL only).

Plain Python: the request check (:mod:`engine.check`) reads it in web processes to refuse an
empty mask before a task is queued, and the inpaint run builds its mask with the same function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from engine.types import EngineRequest


def prepare_mask(request: EngineRequest, size: tuple[int, int]) -> np.ndarray:
    """The uploaded mask as uint8 0/255 at ``size``: channel mean > 127, then erode (k < 0) or
    dilate (k > 0) |k| times with a 3x3 window, then inverted when asked."""
    if request.inpaint_mask_image is None:
        mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    else:
        image = request.inpaint_mask_image
        if image.mode in ("RGBA", "LA"):
            image = image.convert("RGBA")
            # A transparent mask layer paints with its alpha.
            alpha = np.asarray(image.getchannel("A"), dtype=np.float32)
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=2)
            gray = np.minimum(rgb, alpha) if alpha.min() < 255 else rgb
        else:
            gray = np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=2)
        resized = Image.fromarray(gray.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        mask = np.where(np.asarray(resized) > 127, 255, 0).astype(np.uint8)
    k = request.inpaint_erode_or_dilate
    if k:
        window = ImageFilter.MaxFilter(3) if k > 0 else ImageFilter.MinFilter(3)
        pil = Image.fromarray(mask)
        for _ in range(abs(k)):
            pil = pil.filter(window)
        mask = np.asarray(pil).copy()
    if request.invert_mask_checkbox:
        mask = 255 - mask
    return mask
