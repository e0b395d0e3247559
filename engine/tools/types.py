"""The tool requests and their option names, importable without torch (the web validates with
them). Defaults and ranges are FooocusAPI's (reference fooocusapi §1.3-1.4)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

DESCRIBE_TYPES: tuple[str, ...] = ("Photo", "Anime")
# The background-removal models (rembg's names) and the text-prompted "sam".
REMBG_MODELS: tuple[str, ...] = (
    "u2net",
    "u2netp",
    "u2net_human_seg",
    "u2net_cloth_seg",
    "silueta",
    "isnet-general-use",
    "isnet-anime",
)
MASK_MODELS: tuple[str, ...] = (*REMBG_MODELS, "sam")
DEFAULT_MASK_MODEL = "isnet-general-use"
CLOTH_CATEGORIES: tuple[str, ...] = ("full", "upper", "lower")
SAM_MODELS: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")
MAX_SAM_DETECTIONS = 10
MAX_DINO_GROW = 64

TOOL_KINDS: tuple[str, ...] = ("describe", "mask")


@dataclass(frozen=True)
class DescribeRequest:
    """Image to prompt text: ``Photo`` captions with BLIP, ``Anime`` tags with WD14."""

    image: Image.Image
    image_type: str = "Photo"


@dataclass(frozen=True)
class MaskRequest:
    """Image to mask. ``cloth_category`` is read by u2net_cloth_seg only; the ``dino_*``,
    ``sam_*`` and threshold fields by ``sam`` only. ``sam_max_detections`` 0 keeps every
    detection; ``dino_erode_or_dilate`` grows (> 0) or shrinks each box by that many pixels;
    ``dino_debug`` returns the boxes, filled white, instead of SAM's masks."""

    image: Image.Image
    mask_model: str = DEFAULT_MASK_MODEL
    cloth_category: str = "full"
    dino_prompt_text: str = ""
    sam_model: str = "vit_b"
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    sam_max_detections: int = 0
    dino_erode_or_dilate: float = 0
    dino_debug: bool = False


@dataclass(frozen=True)
class MaskResult:
    """A mask (mode ``L``, 0/255 for sam, soft 0..255 for the rembg models, image-sized) and
    what the detector found: boxes found by GroundingDINO, masks SAM made, masks merged."""

    mask: Image.Image
    dino_detections: int = 0
    sam_detections: int = 0
    sam_applied: int = 0
