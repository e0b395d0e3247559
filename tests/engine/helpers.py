"""Plain helpers shared by the engine tests (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine import Engine, EngineConfig, EngineRequest

ROOT = Path(__file__).resolve().parents[2]


def cpu_engine(models_dir: Path, **config: Any) -> Engine:
    """A CPU Engine on ``models_dir`` and the project's styles, downloads off.

    ``config`` sets any other :class:`EngineConfig` field (``vram``, ``batch_images``, ...).
    """
    return Engine(
        EngineConfig(
            models_dir=models_dir,
            styles_dir=ROOT / "styles",
            device="cpu",
            allow_downloads=False,
            **config,
        )
    )


def first_image_pixels(engine: Engine, request: EngineRequest) -> np.ndarray:
    """The first image ``request`` gives, as float64 pixels."""
    return np.asarray(engine.generate(request).images[0].image, dtype=np.float64)
