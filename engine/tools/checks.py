"""The torch-free checks of the tool requests and of enhance, run by web processes (through
:class:`engine.check.RequestChecker`) and by the engine before any model loads."""

from __future__ import annotations

from PIL import Image

from engine.options import INPAINT_ENGINES, UOV_METHODS
from engine.tools.types import (
    DESCRIBE_TYPES,
    ENHANCE_PROMPT_TYPES,
    ENHANCE_UOV_ORDERS,
    MASK_MODELS,
    MAX_ENHANCE_REGIONS,
    SAM_MODELS,
    DescribeRequest,
    EnhanceSpec,
    MaskRequest,
)
from engine.types import EngineInputError


def check_describe(request: DescribeRequest) -> None:
    """Raise EngineInputError for an image type Fooocus does not know."""
    if request.image_type not in DESCRIBE_TYPES:
        raise EngineInputError(
            "image_type", f"image_type must be one of {', '.join(DESCRIBE_TYPES)}"
        )


def check_mask(request: MaskRequest) -> None:
    """Raise EngineInputError for an unknown model, SAM size or an out-of-range number."""
    if request.mask_model not in MASK_MODELS:
        raise EngineInputError("mask_model", f"unknown mask_model '{request.mask_model}'")
    if request.mask_model == "sam" and request.sam_model not in SAM_MODELS:
        raise EngineInputError("sam_model", f"sam_model must be one of {', '.join(SAM_MODELS)}")
    for name in ("box_threshold", "text_threshold"):
        if not 0.0 <= getattr(request, name) <= 1.0:
            raise EngineInputError(name, f"{name} must be between 0 and 1")


def check_enhance(spec: EnhanceSpec) -> None:
    """Raise EngineInputError for an enhance request that cannot run, naming the field."""
    if spec.uov_method != "Disabled" and spec.uov_method not in UOV_METHODS:
        raise EngineInputError("enhance_uov_method", f"unknown method '{spec.uov_method}'")
    if spec.uov_processing_order not in ENHANCE_UOV_ORDERS:
        raise EngineInputError("enhance_uov_processing_order", "unknown processing order")
    if spec.uov_prompt_type not in ENHANCE_PROMPT_TYPES:
        raise EngineInputError("enhance_uov_prompt_type", "unknown prompt type")
    if len(spec.regions) > MAX_ENHANCE_REGIONS:
        raise EngineInputError("enhance_ctrls", f"at most {MAX_ENHANCE_REGIONS} regions")
    if not spec.regions and spec.uov_method == "Disabled":
        raise EngineInputError(
            "enhance_ctrls", "enhance needs an enabled region or an enhance_uov_method"
        )
    for region in spec.regions:
        if region.inpaint_engine not in INPAINT_ENGINES:
            raise EngineInputError(
                "enhance_ctrls", f"unknown inpaint engine '{region.inpaint_engine}'"
            )
        try:
            check_mask(
                MaskRequest(
                    Image.new("RGB", (1, 1)),
                    mask_model=region.mask_model,
                    sam_model=region.sam_model,
                    box_threshold=region.box_threshold,
                    text_threshold=region.text_threshold,
                )
            )
        except EngineInputError as exc:
            raise EngineInputError("enhance_ctrls", exc.message) from exc
