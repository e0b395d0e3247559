"""The background-removal models on their demo stand-ins, against the same maths done by hand:
rembg's preprocessing, the stand-in graph's convolution in torch, rembg's post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from engine.tools.files import REMBG_FOLDER, rembg_file
from engine.tools.segment import Segmenter
from engine.tools.types import REMBG_MODELS

SIDES = {"u2net_cloth_seg": 768, "isnet-general-use": 1024, "isnet-anime": 1024}
MEANS = {"isnet-general-use": (0.5, 0.5, 0.5)}
STDS = {"isnet-general-use": (1.0, 1.0, 1.0), "isnet-anime": (1.0, 1.0, 1.0)}


def _image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 200, (50, 70, 3), dtype=np.uint8))


def _by_hand(path: Path, model: str, image: Image.Image) -> np.ndarray:
    side = SIDES.get(model, 320)
    mean = np.array(MEANS.get(model, (0.485, 0.456, 0.406)))
    std = np.array(STDS.get(model, (0.229, 0.224, 0.225)))
    pixels = np.asarray(image.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    pixels = (pixels / pixels.max() - mean) / std
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    out = torch.nn.functional.conv2d(
        torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32)),
        torch.from_numpy(weights["w"].copy()),
        torch.from_numpy(weights["b"].copy()),
        padding=1,
    ).numpy()
    return out


@pytest.mark.parametrize("model", [m for m in REMBG_MODELS if m != "u2net_cloth_seg"])
def test_single_map_models_match_rembg_maths(demo_models_dir: Path, model: str) -> None:
    path = demo_models_dir / REMBG_FOLDER / rembg_file(model)
    image = _image()
    mask = Segmenter(model, path).mask(image)
    pred = 1 / (1 + np.exp(-_by_hand(path, model, image)[0, 0].astype(np.float64)))
    pred = (pred - pred.min()) / (pred.max() - pred.min())
    expected = Image.fromarray((pred * 255).astype(np.uint8)).resize(
        image.size, Image.Resampling.LANCZOS
    )
    assert mask.mode == "L"
    assert mask.size == image.size
    got, want = np.asarray(mask, dtype=np.int16), np.asarray(expected, dtype=np.int16)
    # float32 in onnxruntime vs float64 here: a value may land one grey level apart.
    assert np.abs(got - want).max() <= 1
    assert (got == want).mean() > 0.95


@pytest.mark.parametrize(("category", "label"), [("upper", 1), ("lower", 2), ("full", 3)])
def test_cloth_seg_keeps_the_category_class(
    demo_models_dir: Path, category: str, label: int
) -> None:
    path = demo_models_dir / REMBG_FOLDER / rembg_file("u2net_cloth_seg")
    image = _image()
    mask = np.asarray(Segmenter("u2net_cloth_seg", path).mask(image, category))
    labels = np.argmax(_by_hand(path, "u2net_cloth_seg", image), axis=1)[0].astype(np.uint8)
    resized = np.asarray(Image.fromarray(labels).resize(image.size, Image.Resampling.LANCZOS))
    expected = np.where(resized == label, 255, 0)
    assert set(np.unique(mask)) <= {0, 255}
    # A logit tie between float32 and float64 could flip a pixel; allow a handful.
    assert (mask != expected).sum() <= 5


def test_unknown_cloth_category_is_refused(demo_models_dir: Path) -> None:
    path = demo_models_dir / REMBG_FOLDER / rembg_file("u2net_cloth_seg")
    with pytest.raises(ValueError, match="cloth category"):
        Segmenter("u2net_cloth_seg", path).mask(_image(), "hat")
