"""Enhance on the demo model set: regions inpainted in turn with pixels outside them untouched,
Vary/Upscale before or after, debugging masks, intermediate images, stop, and its checks."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from PIL import Image

from engine import Engine
from engine.demo.writer import DEMO_CHECKPOINT
from engine.tools.checks import check_enhance
from engine.tools.enhance import enhance_prompt
from engine.tools.masks import boxes_image, grow_boxes
from engine.tools.types import EnhanceRegion, EnhanceSpec, MaskRequest
from engine.types import EngineEvent, EngineInputError, EngineRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SQUARE = np.zeros((64, 64, 3), dtype=np.uint8)
SQUARE[20:44, 20:44] = 255
# The demo u2net's mask of SQUARE, inverted, covers a minority of the image.
REGION = EnhanceRegion(mask_model="u2net", mask_invert=True, prompt="a red cat")


def _request(spec: EnhanceSpec, **changes: object) -> EngineRequest:
    request = EngineRequest(
        base_model_name=DEMO_CHECKPOINT,
        width=64,
        height=64,
        performance_selection="Lightning",
        performance_lora_name="demo_lightning_4step_lora.safetensors",
        seed=7,
        enhance=spec,
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def _run(engine: Engine, request: EngineRequest) -> tuple[list[Image.Image], list[EngineEvent]]:
    events: list[EngineEvent] = []
    result = engine.generate(request, on_event=events.append)
    return [image.image for image in result.images], events


def test_prompt_fallback() -> None:
    assert enhance_prompt("", "main") == "main"
    assert enhance_prompt(" \n \n", "main") == "main"
    assert enhance_prompt("face\n", "main") == "face\n"


def test_one_region_leaves_pixels_outside_it_byte_identical(engine: Engine) -> None:
    source = Image.fromarray(SQUARE)
    images, events = _run(engine, _request(EnhanceSpec(input_image=source, regions=(REGION,))))
    assert len(images) == 1
    out = np.asarray(images[0])
    mask = 255 - np.asarray(engine.tools.mask(MaskRequest(source, "u2net")).mask)
    # The paste-back feathers a few pixels outward at this model size; 6 rings is beyond it.
    region = cv2.dilate((mask > 127).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=6)
    outside = region == 0
    assert outside.mean() > 0.3  # the check below covers a real area
    assert np.array_equal(out[outside], SQUARE[outside])
    assert not np.array_equal(out[~outside], SQUARE[~outside])  # the region was repainted
    messages = [e.message for e in events]
    assert "Processing enhance ..." in messages
    assert "Preparing enhancement 1/1 ..." in messages


def test_regions_chain_and_debug_masks_are_reported(engine: Engine) -> None:
    source = Image.fromarray(SQUARE)
    regions = (REGION, dataclasses.replace(REGION, mask_model="silueta"), REGION)
    spec = EnhanceSpec(input_image=source, regions=regions, debugging_enhance_masks=True)
    images, events = _run(engine, _request(spec))
    # Per region: its mask, then its inpainted image.
    assert len(images) == 6
    masks, steps = images[0::2], images[1::2]
    first = 255 - np.asarray(engine.tools.mask(MaskRequest(source, "u2net")).mask)
    assert np.array_equal(np.asarray(masks[0])[:, :, 0], first)  # the inverted model mask
    for mask in masks:
        pixels = np.asarray(mask)
        assert (pixels[:, :, 0] == pixels[:, :, 2]).all()  # grey, shown as RGB
    assert [e.message for e in events if e.message.startswith("Preparing enhancement")] == [
        "Preparing enhancement 1/3 ...",
        "Preparing enhancement 2/3 ...",
        "Preparing enhancement 3/3 ...",
    ]
    progress = [e.progress for e in events]
    assert progress == sorted(progress)
    assert len({np.asarray(s).tobytes() for s in steps}) == 3  # each region worked on the last


def test_final_only_and_uov_before_and_after(engine: Engine) -> None:
    source = Image.fromarray(SQUARE)
    before = EnhanceSpec(
        input_image=source,
        regions=(REGION,),
        uov_method="Upscale (Fast 2x)",
        uov_processing_order="Before First Enhancement",
    )
    images, _ = _run(engine, _request(before))
    assert [i.size for i in images] == [(128, 128), (128, 128)]  # upscaled, then inpainted
    final_only, events = _run(
        engine, _request(dataclasses.replace(before, save_final_enhanced_image_only=True))
    )
    assert len(final_only) == 1
    assert final_only[0].size == (128, 128)
    after = dataclasses.replace(before, uov_processing_order="After Last Enhancement")
    images, events = _run(engine, _request(after))
    assert [i.size for i in images] == [(64, 64), (128, 128)]  # inpainted, then upscaled
    assert "Preparing enhancement 2/2 ..." in [e.message for e in events]


def test_generated_images_are_enhanced_when_no_input_is_given(engine: Engine) -> None:
    spec = EnhanceSpec(regions=(REGION,))
    images, _ = _run(engine, _request(spec, image_number=2))
    assert len(images) == 4  # two generated, two enhanced
    final, _ = _run(
        engine,
        _request(dataclasses.replace(spec, save_final_enhanced_image_only=True), image_number=2),
    )
    assert len(final) == 2


def test_stop_ends_the_request(engine: Engine) -> None:
    spec = EnhanceSpec(input_image=Image.fromarray(SQUARE), regions=(REGION, REGION))
    result = engine.generate(_request(spec), should_stop=lambda: "stop")
    assert result.stopped
    assert not result.images


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (EnhanceSpec(), "enhance_ctrls"),
        (EnhanceSpec(regions=(EnhanceRegion(mask_model="u3net"),)), "enhance_ctrls"),
        (EnhanceSpec(regions=(EnhanceRegion(sam_model="vit_q"),)), "enhance_ctrls"),
        (EnhanceSpec(regions=(EnhanceRegion(inpaint_engine="v9"),)), "enhance_ctrls"),
        (
            EnhanceSpec(uov_method="Vary (Strong)", uov_processing_order="Sometimes"),
            "enhance_uov_processing_order",
        ),
        (EnhanceSpec(uov_method="Vary (Strong)", uov_prompt_type="Any"), "enhance_uov_prompt_type"),
    ],
)
def test_checks_name_the_field(spec: EnhanceSpec, field: str) -> None:
    with pytest.raises(EngineInputError) as error:
        check_enhance(spec)
    assert error.value.field == field


def test_debugging_dino_inpaints_the_grown_boxes(engine: Engine) -> None:
    source = Image.fromarray(SQUARE)
    region = EnhanceRegion(mask_model="sam", mask_dino_prompt="cat", box_threshold=0.0)
    spec = EnhanceSpec(
        input_image=source,
        regions=(region,),
        debugging_dino=True,
        dino_erode_or_dilate=2,
        debugging_enhance_masks=True,
    )
    images, _ = _run(engine, _request(spec))
    assert len(images) == 2  # the boxes mask, then the inpainted image
    boxes = engine.tools.detector().boxes(source, "cat", 0.0)
    expected = boxes_image(grow_boxes(boxes, 2), 64, 64)
    assert np.array_equal(np.asarray(images[0])[:, :, 0], expected)


def test_a_region_with_no_detection_is_skipped(engine: Engine) -> None:
    source = Image.fromarray(SQUARE)
    region = EnhanceRegion(mask_model="sam", mask_dino_prompt="cat", box_threshold=1.0)
    images, events = _run(engine, _request(EnhanceSpec(input_image=source, regions=(region,))))
    assert images == []
    assert "Enhancement 1/1: nothing found, skipped" in [e.message for e in events]
    final = EnhanceSpec(input_image=source, regions=(region,), save_final_enhanced_image_only=True)
    images, _ = _run(engine, _request(final))
    assert len(images) == 1
    assert np.array_equal(np.asarray(images[0]), SQUARE)  # unchanged, reported as the final one
