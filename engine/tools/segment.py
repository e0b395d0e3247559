"""The background-removal models (rembg's ONNX files), run with onnxruntime.

Each model family is fed the way rembg feeds it (the ``sessions`` modules of rembg 2.0.x):
RGB resized with Lanczos to the model's side, divided by the image's own maximum, normalised per
channel, NCHW float32. The first output's first channel is min-max scaled to 0..255 and resized
back (Lanczos); u2net_cloth_seg instead takes the arg-max over its four classes (background,
upper, lower, full) and keeps the pixels of the asked category.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How rembg feeds one model: its square side, and the per-channel mean and std."""

    side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PREPROCESS: dict[str, Preprocess] = {
    "u2net": Preprocess(320, IMAGENET_MEAN, IMAGENET_STD),
    "u2netp": Preprocess(320, IMAGENET_MEAN, IMAGENET_STD),
    "u2net_human_seg": Preprocess(320, IMAGENET_MEAN, IMAGENET_STD),
    "silueta": Preprocess(320, IMAGENET_MEAN, IMAGENET_STD),
    "u2net_cloth_seg": Preprocess(768, IMAGENET_MEAN, IMAGENET_STD),
    "isnet-general-use": Preprocess(1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
    "isnet-anime": Preprocess(1024, IMAGENET_MEAN, (1.0, 1.0, 1.0)),
}
# u2net_cloth_seg's classes: 0 background, 1 upper body, 2 lower body, 3 full body.
CLOTH_CLASSES = {"upper": 1, "lower": 2, "full": 3}


def session_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, else the CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path) -> ort.InferenceSession:
    """An onnxruntime session on ``path`` (quiet, on the best provider present)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=session_providers())


def normalize(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """rembg's input: (1, 3, side, side) float32."""
    resized = image.convert("RGB").resize((prep.side, prep.side), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized).astype(np.float64)
    pixels = pixels / max(float(pixels.max()), 1e-6)
    mean = np.asarray(prep.mean, dtype=np.float64)
    std = np.asarray(prep.std, dtype=np.float64)
    pixels = (pixels - mean) / std
    return pixels.transpose(2, 0, 1)[None].astype(np.float32)


class Segmenter:
    """One loaded background-removal model."""

    def __init__(self, model: str, path: Path) -> None:
        if model not in PREPROCESS:
            raise ValueError(f"unknown background-removal model {model!r}")
        self.model = model
        self.session = open_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def mask(self, image: Image.Image, cloth_category: str = "full") -> Image.Image:
        """The model's mask for ``image`` (mode ``L``, the image's size)."""
        prep = PREPROCESS[self.model]
        output = self.session.run(None, {self.input_name: normalize(image, prep)})[0]
        if self.model == "u2net_cloth_seg":
            return _cloth_mask(output, image.size, cloth_category)
        pred = output[:, 0, :, :].astype(np.float64)
        low, high = float(pred.min()), float(pred.max())
        scaled = (pred - low) / (high - low) if high > low else np.zeros_like(pred)
        small = Image.fromarray((np.squeeze(scaled).clip(0, 1) * 255).astype(np.uint8), mode="L")
        return small.resize(image.size, Image.Resampling.LANCZOS)


def _cloth_mask(output: np.ndarray, size: tuple[int, int], category: str) -> Image.Image:
    if category not in CLOTH_CLASSES:
        raise ValueError(f"unknown cloth category {category!r}")
    labels = np.argmax(output, axis=1)[0].astype(np.uint8)
    # rembg resizes the label map itself (Lanczos) and keeps exact label values only.
    resized = np.asarray(Image.fromarray(labels, mode="L").resize(size, Image.Resampling.LANCZOS))
    return Image.fromarray(np.where(resized == CLOTH_CLASSES[category], 255, 0).astype(np.uint8))
