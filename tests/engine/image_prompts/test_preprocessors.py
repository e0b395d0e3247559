"""The image-prompt preprocessors on small synthetic images (§9)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.image_prompts.face import face_crop
from engine.image_prompts.preprocessors import clip_input, cpds, fit_cover, pyramid_canny
from engine.image_prompts.slots import preprocess, resolve_slots
from engine.types import EngineRequest, ImagePromptSpec


def step_image(width: int = 64, height: int = 64, edge: int = 32) -> Image.Image:
    """Dark left part, bright right part: one vertical edge at column ``edge``."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, edge:] = 220
    return Image.fromarray(array)


def test_pyramid_canny_finds_the_edge_where_it_is() -> None:
    edges = np.asarray(pyramid_canny(step_image(), 64, 128))
    assert edges.shape == (64, 64, 3)
    assert (edges[:, :, 0] == edges[:, :, 1]).all()
    columns = edges[:, :, 0].max(axis=0)
    assert columns[28:36].max() == 255  # strongest near the step
    assert columns[:12].max() == 0
    assert columns[-12:].max() == 0


def test_canny_thresholds_change_the_map() -> None:
    array = np.zeros((64, 64, 3), np.uint8)
    array[:, 16:] = 40  # a weak edge
    array[:, 48:] = 255  # a strong edge
    image = Image.fromarray(array)
    low = np.asarray(pyramid_canny(image, 10, 20))[:, :, 0].max(axis=0)
    high = np.asarray(pyramid_canny(image, 200, 400))[:, :, 0].max(axis=0)
    assert low[12:20].max() > 0  # the weak edge passes low thresholds
    assert high[12:20].max() == 0  # and not high ones
    assert high[44:52].max() > 0


def test_cpds_marks_contrast_and_keeps_flat_regions_flat() -> None:
    array = np.zeros((64, 64, 3), np.uint8)
    array[:, :32] = (200, 30, 30)
    array[:, 32:] = (30, 30, 200)
    values = np.asarray(cpds(Image.fromarray(array)))[:, :, 0].astype(int)
    assert values.shape == (64, 64)
    left, right = values[:, 4:24], values[:, 40:60]
    assert left.std() < 2
    assert right.std() < 2
    assert abs(left.mean() - right.mean()) > 50  # equal-luma colours still differ


def test_fit_cover_and_clip_sizes() -> None:
    wide = step_image(96, 48)
    assert fit_cover(wide, 64, 64).size == (64, 64)
    assert face_crop(wide).size == (48, 48)
    assert clip_input(wide).size == (224, 224)


def test_skipping_the_preprocessor_only_fits_the_size() -> None:
    image = step_image(96, 64, edge=48)
    request = EngineRequest(
        base_model_name="x",
        image_prompts=(ImagePromptSpec(image, "PyraCanny"),),
        skipping_cn_preprocessor=True,
    )
    (slot,) = resolve_slots(request)
    assert (slot.stop, slot.weight) == (0.5, 1.0)  # the type's defaults
    hint = preprocess(slot, request, 64, 64)
    assert np.array_equal(np.asarray(hint), np.asarray(image.crop((16, 0, 80, 64))))
