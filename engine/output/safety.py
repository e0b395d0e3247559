"""black_out_nsfw: the CompVis safety checker, replacing flagged images by black ones (§10.3).

The checker (diffusers' ``StableDiffusionSafetyChecker``) embeds the image with a CLIP vision
tower and compares it with 17 concept and 3 "special care" embeddings against per-concept
thresholds. The weights file is the checker's state dict; its architecture comes from a
``<stem>.config/config.json`` beside it when present (the demo's tiny one) or from the shipped
CLIP ViT-L/14 config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from engine.models.components import CONFIG_DIR
from engine.models.loading import open_weights, sidecar_config_dir

SAFETY_CONFIG_DIR = CONFIG_DIR / "safety_checker"


class SafetyFilter:
    """``filter(images) -> (images, flags)``: flagged images come back black."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        config = CLIPConfig.from_pretrained(sidecar_config_dir(path) or SAFETY_CONFIG_DIR)
        checker = StableDiffusionSafetyChecker(config)
        with open_weights(path) as source:
            state = {name: source[name] for name in source.names}
        missing, unexpected = checker.load_state_dict(state, strict=False)
        # Older exports carry the position_ids buffer; nothing else may be missing or extra.
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{path.name} is not a safety checker: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        self.checker = checker.to(device=device, dtype=dtype).eval().requires_grad_(False)
        vision = config.vision_config
        size = int(getattr(vision, "image_size", 224))
        self.processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """The images with every flagged one replaced by a black image, and the flags."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        arrays = [np.asarray(image) for image in images]
        _, flags = self.checker(
            clip_input=pixels.to(device=self.device, dtype=self.dtype), images=arrays
        )
        out = [
            Image.new("RGB", image.size) if flagged else image
            for image, flagged in zip(images, flags, strict=True)
        ]
        return out, [bool(f) for f in flags]
