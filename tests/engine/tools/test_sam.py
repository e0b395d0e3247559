"""GroundingDINO + SAM on the demo stand-ins: thresholds, boxes, debug boxes, max detections."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models.manager import ModelManager
from engine.tools.masks import boxes_image, grow_boxes
from engine.tools.models import ToolModels
from engine.tools.sam import dino_caption, pixel_boxes
from engine.tools.types import MaskRequest
from engine.types import EngineInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tools(model_manager: ModelManager) -> ToolModels:
    return ToolModels(model_manager, torch.device("cpu"), torch.float32)


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(9).integers(0, 255, (60, 80, 3), dtype=np.uint8))


def test_caption_and_box_conversion() -> None:
    assert dino_caption("  A Cat ") == "a cat."
    assert dino_caption("face.") == "face."
    boxes = pixel_boxes(np.array([[0.5, 0.5, 0.2, 0.4]]), 100, 50)
    assert np.allclose(boxes, [[40, 15, 60, 35]])


def test_no_box_above_the_threshold_gives_an_empty_mask(tools: ToolModels) -> None:
    result = tools.mask(MaskRequest(_image(), "sam", dino_prompt_text="cat", box_threshold=1.0))
    assert result.dino_detections == 0
    assert result.sam_applied == 0
    assert result.mask.size == (80, 60)
    assert not np.asarray(result.mask).any()


def test_debug_returns_the_grown_boxes(tools: ToolModels) -> None:
    image = _image()
    boxes = tools.detector().boxes(image, "cat", 0.0)
    assert len(boxes) == tools.detector().model.config.num_queries  # every query passes 0
    result = tools.mask(
        MaskRequest(
            image,
            "sam",
            dino_prompt_text="cat",
            box_threshold=0.0,
            dino_erode_or_dilate=3,
            dino_debug=True,
        )
    )
    expected = boxes_image(grow_boxes(boxes, 3), 80, 60)
    assert result.dino_detections == len(boxes)
    assert np.array_equal(np.asarray(result.mask), expected)


def test_max_detections_limits_the_merged_masks(tools: ToolModels) -> None:
    request = MaskRequest(_image(), "sam", dino_prompt_text="cat", box_threshold=0.0)
    every = tools.mask(request)
    two = tools.mask(
        MaskRequest(
            _image(), "sam", dino_prompt_text="cat", box_threshold=0.0, sam_max_detections=2
        )
    )
    assert every.sam_detections == every.dino_detections == every.sam_applied
    assert two.sam_applied == 2
    assert two.sam_detections == every.sam_detections
    all_pixels, two_pixels = np.asarray(every.mask) > 0, np.asarray(two.mask) > 0
    assert set(np.unique(np.asarray(two.mask))) <= {0, 255}
    assert not (two_pixels & ~all_pixels).any()  # a subset of the union of all


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mask_model": "u3net"}, "mask_model"),
        ({"mask_model": "sam", "sam_model": "vit_x"}, "sam_model"),
        ({"box_threshold": 1.5}, "box_threshold"),
        ({"text_threshold": -0.1}, "text_threshold"),
    ],
)
def test_bad_requests_name_the_field(tools: ToolModels, change: dict[str, Any], field: str) -> None:
    with pytest.raises(EngineInputError) as error:
        tools.mask(MaskRequest(_image(), **change))
    assert error.value.field == field
