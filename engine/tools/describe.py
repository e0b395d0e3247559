"""Describe an image: BLIP captions for photos, the WD14 tagger's tags for anime images.

Both are fed as Fooocus feeds them (``extras/interrogate.py``, ``extras/wd14tagger.py``):

- BLIP: RGB to a tensor, bicubic resize to the vision model's side (384 for the real model),
  CLIP mean/std; the caption is decoded from the prompt "a picture of " with nucleus sampling
  (top-p 0.9, 5 to 75 tokens) and the prompt is cut off again. The sampling is seeded so that one
  image always gets one caption.
- WD14: the image fitted (Lanczos) into a white square of the model's side, BGR float 0..255
  NHWC; general tags above 0.35 and character tags above 0.85, characters first, joined with
  ", ", underscores to spaces and brackets escaped.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf
from transformers import AutoTokenizer, BlipForConditionalGeneration

from engine.tools.segment import open_session

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAPTION_PROMPT = "a picture of "
CAPTION_MAX_TOKENS = 75
CAPTION_MIN_TOKENS = 5
CAPTION_TOP_P = 0.9
CAPTION_SEED = 0
GENERAL_THRESHOLD = 0.35
CHARACTER_THRESHOLD = 0.85
# The tag list's category column: 0 general, 4 character (9, ratings, come first and are skipped).
GENERAL_CATEGORY = "0"
CHARACTER_CATEGORY = "4"


class Captioner:
    """BLIP image captioning (transformers ``BlipForConditionalGeneration``)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = BlipForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        self.model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        self.device = device
        self.dtype = dtype
        self.side = int(model.config.vision_config.image_size)  # type: ignore[union-attr]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The model input for ``image``: (1, 3, side, side)."""
        tensor = tvf.to_tensor(image.convert("RGB"))
        tensor = tvf.resize(
            tensor, [self.side, self.side], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        tensor = tvf.normalize(tensor, list(CLIP_MEAN), list(CLIP_STD))
        return tensor.unsqueeze(0).to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def caption(self, image: Image.Image) -> str:
        """One caption for ``image``, without the "a picture of" prompt."""
        prompt = self.tokenizer(CAPTION_PROMPT.strip(), return_tensors="pt").input_ids
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(CAPTION_SEED)
            tokens = self.model.generate(
                pixel_values=self.pixels(image),
                input_ids=prompt.to(self.device),
                do_sample=True,
                top_p=CAPTION_TOP_P,
                num_beams=1,
                max_length=CAPTION_MAX_TOKENS,
                min_length=CAPTION_MIN_TOKENS,
                repetition_penalty=1.0,
            )
        text = str(self.tokenizer.decode(tokens[0], skip_special_tokens=True)).strip()
        prefix = CAPTION_PROMPT.strip()
        return text[len(prefix) :].strip() if text.startswith(prefix) else text


def read_tags(path: Path) -> list[tuple[str, str]]:
    """The tag list CSV (``tag_id,name,category,count``): (name, category) per row."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return [(row[1], row[2]) for row in rows[1:] if len(row) >= 3]


def tagger_input(image: Image.Image, side: int) -> np.ndarray:
    """The WD14 input: the image fitted into a white ``side`` square, BGR, (1, side, side, 3)."""
    rgb = image.convert("RGB")
    ratio = float(side) / max(rgb.size)
    size = (int(rgb.size[0] * ratio), int(rgb.size[1] * ratio))
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(
        rgb.resize(size, Image.Resampling.LANCZOS), ((side - size[0]) // 2, (side - size[1]) // 2)
    )
    pixels = np.asarray(square).astype(np.float32)[:, :, ::-1]
    return np.ascontiguousarray(pixels[None])


def tags_text(
    tags: list[tuple[str, str]],
    probabilities: np.ndarray,
    general_threshold: float = GENERAL_THRESHOLD,
    character_threshold: float = CHARACTER_THRESHOLD,
) -> str:
    """The prompt text from tag probabilities, as Fooocus builds it."""
    general_start = next((i for i, t in enumerate(tags) if t[1] == GENERAL_CATEGORY), len(tags))
    character_start = next(
        (i for i, t in enumerate(tags) if i > general_start and t[1] == CHARACTER_CATEGORY),
        len(tags),
    )
    scored = list(zip((name for name, _ in tags), probabilities.tolist(), strict=False))
    general = [s for s in scored[general_start:character_start] if s[1] > general_threshold]
    characters = [s for s in scored[character_start:] if s[1] > character_threshold]
    names = (name.replace("(", "\\(").replace(")", "\\)") for name, _ in characters + general)
    return ", ".join(names).replace("_", " ")


class Tagger:
    """The WD14 MOAT tagger (ONNX) with its tag list."""

    def __init__(self, model_path: Path, tags_path: Path) -> None:
        self.session = open_session(model_path)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.side = int(first.shape[1])
        self.output_name = self.session.get_outputs()[0].name
        self.tags = read_tags(tags_path)

    def describe(self, image: Image.Image) -> str:
        """The tags of ``image`` as prompt text."""
        probabilities = self.session.run(
            [self.output_name], {self.input_name: tagger_input(image, self.side)}
        )[0][0]
        return tags_text(self.tags, probabilities)
