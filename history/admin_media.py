"""Thumbnails of output images for the admin's task list."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

THUMBNAIL_PX = 128


def thumbnail_jpeg(path: Path, size: int = THUMBNAIL_PX) -> bytes:
    """A JPEG no larger than ``size`` pixels on its long side: a list of 50 full-size PNGs
    would be tens of megabytes."""
    with Image.open(path) as image:
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()
