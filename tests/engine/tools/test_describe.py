"""Describe-image: the WD14 tagger against its maths done by hand, the tag text rules, and the
BLIP captioner's input and flow on the demo stand-ins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from engine.models.manager import ModelManager
from engine.tools.describe import Captioner, Tagger, read_tags, tagger_input, tags_text
from engine.tools.files import BLIP_FOLDER, DESCRIBE_FOLDER, TAGGER_FILE, TAGGER_TAGS_FILE
from engine.tools.models import ToolModels
from engine.tools.types import DescribeRequest
from engine.types import EngineInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TAGS = [
    ("safe", "9"),
    ("1girl", "0"),
    ("long_hair", "0"),
    ("smile", "0"),
    ("hatsune_miku", "4"),
    ("madoka_(cosplay)", "4"),
]


def test_tag_text_thresholds_order_and_escaping() -> None:
    probabilities = np.array([0.99, 0.36, 0.35, 0.9, 0.86, 0.9])
    # rating skipped; general > 0.35 (0.35 itself is out); characters > 0.85, listed first.
    assert tags_text(TAGS, probabilities) == "hatsune miku, madoka \\(cosplay\\), 1girl, smile"
    assert tags_text(TAGS, np.array([0.99, 0.1, 0.1, 0.1, 0.5, 0.84])) == ""


def test_tagger_input_pads_to_a_white_square_in_bgr() -> None:
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    pixels = tagger_input(image, 8)
    assert pixels.shape == (1, 8, 8, 3)
    assert pixels.dtype == np.float32
    assert pixels[0, 0, 0].tolist() == [255, 255, 255]  # padding above the 8x4 picture
    assert pixels[0, 4, 4].tolist() == [30, 20, 10]  # BGR


def test_tagger_matches_its_graph_by_hand(demo_models_dir: Path) -> None:
    folder = demo_models_dir / DESCRIBE_FOLDER
    tagger = Tagger(folder / TAGGER_FILE, folder / TAGGER_TAGS_FILE)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    weights = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load(str(folder / TAGGER_FILE)).graph.initializer
    }
    side = tagger.side
    fitted = image.resize((int(30 * side / 40), side), Image.Resampling.LANCZOS)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(fitted, ((side - fitted.width) // 2, 0))
    bgr = np.asarray(square, dtype=np.float64)[:, :, ::-1]
    logits = bgr.mean(axis=(0, 1)) / 255 @ weights["w"] + weights["b"]
    expected = tags_text(read_tags(folder / TAGGER_TAGS_FILE), 1 / (1 + np.exp(-logits)))
    assert tagger.describe(image) == expected


def test_captioner_input_is_clip_normalised_at_the_model_side(demo_models_dir: Path) -> None:
    captioner = Captioner(demo_models_dir / BLIP_FOLDER, torch.device("cpu"), torch.float32)
    pixels = captioner.pixels(Image.new("RGB", (50, 30), (255, 0, 128)))
    side = captioner.model.config.vision_config.image_size
    assert pixels.shape == (1, 3, side, side)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), mean, std, strict=True)]
    assert torch.allclose(pixels[0, :, 5, 5], torch.tensor(expected), atol=1e-5)


def test_caption_is_seeded_and_drops_the_prompt(model_manager: ModelManager) -> None:
    tools = ToolModels(model_manager, torch.device("cpu"), torch.float32)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    first = tools.describe(DescribeRequest(image, "Photo"))
    torch.manual_seed(123)  # the caller's random state does not matter
    assert tools.describe(DescribeRequest(image, "Photo")) == first
    assert not first.startswith("a picture of")
    assert tools.captioner() is tools.captioner()  # kept loaded
    anime = tools.describe(DescribeRequest(image, "Anime"))
    assert isinstance(anime, str)
    assert "_" not in anime


def test_unknown_image_type_is_refused(model_manager: ModelManager) -> None:
    tools = ToolModels(model_manager, torch.device("cpu"), torch.float32)
    with pytest.raises(EngineInputError) as error:
        tools.describe(DescribeRequest(Image.new("RGB", (8, 8)), "Cartoon"))
    assert error.value.field == "image_type"
