"""File bookkeeping: input images by content hash, output images by date, safe lookups."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tempfile
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from PIL import Image

_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def outputs_dir() -> Path:
    return Path(settings.FOOOCUS_OUTPUTS_DIR)


def inputs_dir() -> Path:
    return Path(settings.FOOOCUS_INPUTS_DIR)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def input_image_store(image: Image.Image) -> str:
    """Store an input image once, named by the SHA-256 of its PNG encoding; return its file name."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    name = f"{hashlib.sha256(data).hexdigest()}.png"
    path = inputs_dir() / name
    if not path.exists():
        _write_atomic(path, data)
    return name


def output_image_write(*, data: bytes, extension: str, save_name: str | None, index: int) -> str:
    """Write one result image under ``outputs/YYYY-MM-DD/``; return its path relative to outputs.

    Names follow Fooocus (``YYYY-MM-DD_HH-MM-SS_NNNN.ext``) or ``<save_name>-<index>.ext``. A name
    already taken gets a random suffix rather than overwriting another task's file.
    """
    now = timezone.localtime()
    day = now.strftime("%Y-%m-%d")
    folder = outputs_dir() / day
    stem = f"{save_name}-{index}" if save_name else now.strftime("%Y-%m-%d_%H-%M-%S")
    for _ in range(100):
        suffix = "" if save_name else f"_{random.randint(1000, 9999)}"
        candidate = folder / f"{stem}{suffix}.{extension}"
        if save_name and candidate.exists():
            candidate = folder / f"{stem}-{random.randint(1000, 9999)}.{extension}"
        if not candidate.exists():
            _write_atomic(candidate, data)
            return f"{day}/{candidate.name}"
    raise RuntimeError(f"could not find a free output file name in {folder}")


def resolve_output(day: str, name: str) -> Path | None:
    """Map ``/outputs/<day>/<name>`` to a file, or None for anything outside the outputs folder."""
    if not _DATE_DIR.match(day) or not _SAFE_NAME.match(name):
        return None
    return _existing_file_under(outputs_dir(), outputs_dir() / day / name)


def resolve_input(name: str) -> Path | None:
    """Map ``/inputs/<name>`` to a stored input image, or None."""
    if not _SAFE_NAME.match(name):
        return None
    return _existing_file_under(inputs_dir(), inputs_dir() / name)


def _existing_file_under(root: Path, candidate: Path) -> Path | None:
    root = root.resolve()
    try:
        resolved = candidate.resolve()
    except OSError:
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def output_files_delete(relative_paths: list[str]) -> int:
    """Delete result files (paths relative to outputs); return how many existed and were removed."""
    removed = 0
    for relative in relative_paths:
        day, _, name = relative.partition("/")
        path = resolve_output(day, name)
        if path is not None:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
