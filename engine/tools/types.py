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


ENHANCE_UOV_BEFORE = "Before First Enhancement"
ENHANCE_UOV_AFTER = "After Last Enhancement"
ENHANCE_UOV_ORDERS: tuple[str, ...] = (ENHANCE_UOV_BEFORE, ENHANCE_UOV_AFTER)
ENHANCE_PROMPT_ORIGINAL = "Original Prompts"
ENHANCE_PROMPT_LAST_FILLED = "Last Filled Enhancement Prompts"
ENHANCE_PROMPT_TYPES: tuple[str, ...] = (ENHANCE_PROMPT_ORIGINAL, ENHANCE_PROMPT_LAST_FILLED)
MAX_ENHANCE_REGIONS = 3


@dataclass(frozen=True)
class EnhanceRegion:
    """One enhance tab (FooocusAPI's ``EnhanceCtrlNets``, enabled): how to find the region and
    how to inpaint it. Empty prompts mean the request's own."""

    mask_dino_prompt: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    mask_model: str = "sam"
    cloth_category: str = "full"
    sam_model: str = "vit_b"
    text_threshold: float = 0.25
    box_threshold: float = 0.3
    sam_max_detections: int = 0
    inpaint_disable_initial_latent: bool = False
    inpaint_engine: str = "v2.6"
    inpaint_strength: float = 1.0
    inpaint_respective_field: float = 0.618
    inpaint_erode_or_dilate: int = 0
    mask_invert: bool = False


@dataclass(frozen=True)
class EnhanceSpec:
    """Enhance (reference fooocus_engine §8.6): the uploaded ``input_image`` (else the images
    the request generates) goes through an optional Vary/Upscale before the first or after the
    last region, and each region is masked and inpainted in turn."""

    input_image: Image.Image | None = None
    regions: tuple[EnhanceRegion, ...] = ()
    uov_method: str = "Disabled"
    uov_processing_order: str = ENHANCE_UOV_BEFORE
    uov_prompt_type: str = ENHANCE_PROMPT_ORIGINAL
    save_final_enhanced_image_only: bool = False
    debugging_enhance_masks: bool = False
    debugging_dino: bool = False
    dino_erode_or_dilate: int = 0
