"""Inpaint and outpaint on the demo model set: masks, geometry, engines, exact paste-back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineRequest
from engine.config import INPAINT_FOLDER, INPAINT_PATCH_FILES
from engine.demo.writer import DEMO_CHECKPOINT
from engine.inpaint.mask import feather, outpaint_pads, region_of_interest
from engine.inpaint.patch import (
    InpaintPatch,
    latent_mask,
    load_patch,
)
from engine.masks import prepare_mask
from engine.types import EngineInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def picture(width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


BASE = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a window",
    style_selections=(),
    sampler_name="euler",
    scheduler_name="karras",
    overwrite_step=3,
    seed=9,
    width=64,
    height=64,
    inpaint_input_image=picture(),
    inpaint_mask_image=box_mask((64, 64), (24, 24, 40, 40)),
    inpaint_engine="None",
)


def test_mask_is_resized_thresholded_eroded_dilated_and_inverted() -> None:
    small = box_mask((16, 16), (4, 4, 8, 8))  # any size: resized to the image
    base = prepare_mask(replace(BASE, inpaint_mask_image=small), (64, 64))
    assert base.shape == (64, 64)
    assert set(np.unique(base)) == {0, 255}
    area = (base > 0).sum()
    assert 14 * 14 <= area <= 18 * 18
    grown = prepare_mask(
        replace(BASE, inpaint_mask_image=small, inpaint_erode_or_dilate=2), (64, 64)
    )
    shrunk = prepare_mask(
        replace(BASE, inpaint_mask_image=small, inpaint_erode_or_dilate=-2), (64, 64)
    )
    assert (grown > 0).sum() > area > (shrunk > 0).sum()
    assert ((grown > 0) >= (base > 0)).all()
    inverted = prepare_mask(
        replace(BASE, inpaint_mask_image=small, invert_mask_checkbox=True), (64, 64)
    )
    assert (inverted == 255 - base).all()


def test_outpaint_distances_and_region_of_interest() -> None:
    request = replace(BASE, outpaint_selections=("Left", "Bottom"), outpaint_distance=(0, 0, 0, 10))
    assert outpaint_pads(request, 100, 50) == (30, 0, 0, 10)
    request = replace(request, outpaint_distance=(7, 0, 0, 0))
    assert outpaint_pads(request, 100, 50) == (7, 0, 0, 15)
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[40:50, 40:50] = 255
    a, b, c, d = region_of_interest(mask, 0.0)
    assert a <= 40
    assert b >= 50
    assert c <= 40
    assert d >= 50
    assert b - a < 20
    assert region_of_interest(mask, 1.0) == (0, 100, 0, 100)


def test_feather_is_zero_far_from_the_mask() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[30:34, 30:34] = 255
    weight = feather(mask, 64)
    assert weight[31, 31] == 1.0
    assert 0 < weight[29, 31] < 1
    assert weight[0, 0] == 0.0


def test_latent_mask_marks_every_touched_cell() -> None:
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 9, 9] = 1.0
    cells = latent_mask(mask, (4, 4))
    assert cells[0, 0, 1, 1] == 1.0
    assert cells.sum() >= 1


@pytest.mark.parametrize("engine_version", ["None", "v2.6"])
def test_inpaint_keeps_unmasked_pixels_exactly(engine: Engine, engine_version: str) -> None:
    request = replace(BASE, inpaint_engine=engine_version, inpaint_respective_field=0.0)
    result = engine.generate(request)
    (generated,) = result.images
    out = np.asarray(generated.image)
    original = np.asarray(BASE.inpaint_input_image)
    assert out.shape == original.shape
    weight = feather(prepare_mask(request, (64, 64)), 64)
    outside = weight == 0
    assert outside.any()
    assert (out[outside] == original[outside]).all()
    assert (out[24:40, 24:40] != original[24:40, 24:40]).any()


def test_inverted_mask_paints_the_other_side(engine: Engine) -> None:
    request = replace(BASE, invert_mask_checkbox=True)
    out = np.asarray(engine.generate(request).images[0].image)
    original = np.asarray(BASE.inpaint_input_image)
    assert (out[30:34, 30:34] == original[30:34, 30:34]).all()  # the box is kept now
    assert (out[:8, :8] != original[:8, :8]).any()


def test_outpaint_grows_the_image(engine: Engine) -> None:
    request = replace(
        BASE,
        inpaint_mask_image=None,
        outpaint_selections=("Right", "Top"),
        outpaint_distance=(0, 8, 16, 0),
    )
    image = engine.generate(request).images[0].image
    assert image.size == (80, 72)
    original = np.asarray(BASE.inpaint_input_image)
    out = np.asarray(image)
    assert (out[8 + 40 :, :20] == original[40:, :20]).all()


def test_inpaint_strength_and_disabled_initial_latent_change_the_result(engine: Engine) -> None:
    base = np.asarray(engine.generate(BASE).images[0].image, dtype=np.int32)
    weak = np.asarray(engine.generate(replace(BASE, inpaint_strength=0.3)).images[0].image)
    empty = replace(BASE, inpaint_disable_initial_latent=True)
    no_start = np.asarray(engine.generate(empty).images[0].image, dtype=np.int32)
    assert (base != weak).any()
    assert (base != no_start).any()


def test_empty_mask_is_refused(engine: Engine) -> None:
    with pytest.raises(EngineInputError) as info:
        engine.check(replace(BASE, inpaint_mask_image=Image.new("L", (64, 64), 0)))
    assert info.value.field == "inpaint_mask_image"


def test_patch_adds_and_restores_weights_exactly(engine: Engine, demo_models_dir: Path) -> None:
    components = engine.manager.load_base(DEMO_CHECKPOINT)
    unet = components.unet
    path = demo_models_dir / INPAINT_FOLDER / INPAINT_PATCH_FILES["v2.6"]
    deltas = load_patch(path, unet)
    assert "conv_in.weight" in deltas
    before = unet.conv_in.weight.detach().clone()
    patch = InpaintPatch(unet, deltas)
    patch.apply()
    assert not torch.equal(unet.conv_in.weight, before)
    patch.remove()
    assert torch.equal(unet.conv_in.weight, before)


def test_debugging_inpaint_preprocessor_returns_fill_mask_and_crop(engine: Engine) -> None:
    request = replace(BASE, debugging_inpaint_preprocessor=True)
    steps: list[str] = []
    result = engine.generate(
        request, on_event=lambda event: steps.append(event.message), should_stop=None
    )
    assert not any(message.startswith("Sampling step") for message in steps)
    fill, mask, crop = (np.asarray(item.image) for item in result.images)
    assert fill.shape == mask.shape == crop.shape
    assert set(np.unique(mask)) == {0, 255}
    masked = mask[..., 0] > 127
    # Outside the mask the fill is the crop; inside, the fill replaced it.
    assert np.array_equal(fill[~masked], crop[~masked])
    assert not np.array_equal(fill[masked], crop[masked])
