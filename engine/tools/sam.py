"""Text-prompted masks: GroundingDINO finds boxes for the prompt, SAM segments each box
(Fooocus ``extras/inpaint_mask.py``), with transformers' ``GroundingDinoForObjectDetection``
and ``SamModel``.

As in Fooocus: the caption is lower-cased and ends with "."; a query is a detection when its
highest token score is above ``box_threshold`` (``text_threshold`` only picks the words of the
phrase label, which a mask does not show, so it changes nothing here either); boxes (centre,
size, relative) become pixel corners, grown by ``dino_erode_or_dilate``; SAM gives one mask per
box, small holes (< 400 px) are filled, and the first ``sam_max_detections`` masks are merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SamModel,
    SamProcessor,
)

from engine.tools.masks import boxes_image, fill_small_holes, grow_boxes, merge_detections
from engine.tools.types import MaskRequest, MaskResult


def dino_caption(text: str) -> str:
    """GroundingDINO's caption form: lower case, stripped, ending with a full stop."""
    caption = text.lower().strip()
    return caption if caption.endswith(".") else caption + "."


def pixel_boxes(relative: np.ndarray, width: int, height: int) -> np.ndarray:
    """(cx, cy, w, h) relative boxes to (x0, y0, x1, y1) pixels."""
    boxes = relative.astype(np.float32) * np.array([width, height, width, height], dtype=np.float32)
    corners = boxes.copy()
    corners[:, :2] = boxes[:, :2] - boxes[:, 2:] / 2
    corners[:, 2:] = corners[:, :2] + boxes[:, 2:]
    return corners


@dataclass
class Detector:
    """GroundingDINO: the model and its processor (image resize/normalise, BERT tokenizer)."""

    model: GroundingDinoForObjectDetection
    processor: GroundingDinoProcessor
    device: torch.device

    @classmethod
    def load(cls, folder: Path, device: torch.device) -> Detector:
        """Load the transformers folder ``folder`` onto ``device`` (float32: its deformable
        attention has no half-precision CPU kernel)."""
        model = GroundingDinoForObjectDetection.from_pretrained(folder)
        model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        return cls(model, GroundingDinoProcessor.from_pretrained(folder), device)

    @torch.inference_mode()
    def boxes(self, image: Image.Image, prompt: str, box_threshold: float) -> np.ndarray:
        """Pixel boxes (n, 4) of the queries whose best token score passes ``box_threshold``."""
        inputs = self.processor(
            images=image.convert("RGB"), text=dino_caption(prompt), return_tensors="pt"
        )
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        scores = outputs.logits.float().sigmoid()[0].cpu()
        relative = outputs.pred_boxes.float()[0].cpu()
        keep = scores.max(dim=1).values > box_threshold
        return pixel_boxes(relative[keep].numpy(), image.width, image.height)


@dataclass
class SamSegmenter:
    """SAM: the model and its processor (longest side to the model's size, padded)."""

    model: SamModel
    processor: SamProcessor
    device: torch.device

    @classmethod
    def load(cls, folder: Path, device: torch.device, dtype: torch.dtype) -> SamSegmenter:
        """Load the transformers folder ``folder`` onto ``device`` in ``dtype``."""
        model = SamModel.from_pretrained(folder, dtype=dtype)
        model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        return cls(model, SamProcessor.from_pretrained(folder), device)

    @torch.inference_mode()
    def masks(self, image: Image.Image, boxes: np.ndarray) -> list[np.ndarray]:
        """One boolean (height, width) mask per box."""
        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, input_boxes=[boxes.tolist()], return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        outputs = self.model(
            pixel_values=inputs["pixel_values"].to(self.device, dtype),
            input_boxes=inputs["input_boxes"].to(self.device, dtype),
            multimask_output=False,
        )
        masks = self.processor.post_process_masks(
            outputs.pred_masks.float().cpu(),
            inputs["original_sizes"],
            inputs["reshaped_input_sizes"],
        )[0]
        return [mask[0].numpy() for mask in masks]


def text_prompted_mask(
    request: MaskRequest, detector: Detector, segmenter: SamSegmenter | None
) -> MaskResult:
    """The ``sam`` mask model: boxes for ``request.dino_prompt_text``, then SAM's masks
    (``segmenter`` may be None only with ``dino_debug``)."""
    image = request.image
    width, height = image.size
    boxes = detector.boxes(image, request.dino_prompt_text, request.box_threshold)
    found = len(boxes)
    boxes = grow_boxes(boxes, request.dino_erode_or_dilate)
    if request.dino_debug:
        return MaskResult(Image.fromarray(boxes_image(boxes, width, height)), dino_detections=found)
    if found == 0 or segmenter is None:
        return MaskResult(Image.new("L", image.size, 0), dino_detections=found)
    masks = [fill_small_holes(mask) for mask in segmenter.masks(image, boxes)]
    merged, applied = merge_detections(masks, request.sam_max_detections, (height, width))
    return MaskResult(
        Image.fromarray(merged),
        dino_detections=found,
        sam_detections=len(masks),
        sam_applied=applied,
    )
