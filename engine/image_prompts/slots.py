"""Image prompts for one request (§9): the slots, their files, preprocessing and UNet add-ons.

PyraCanny and CPDS become Control-LoRA ControlNets fed with their preprocessed maps; ImagePrompt
and FaceSwap become IP-Adapter tokens in every cross-attention layer. All of them act from the
first step until their time-based stop, and only on the base model (never the refiner).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from engine.config import (
    CLIP_VISION_FILE,
    CLIP_VISION_FOLDER,
    CONTROL_LORA_FILES,
    CONTROLNET_FOLDER,
    IP_ADAPTER_FILES,
    IP_NEGATIVE_FILE,
)
from engine.image_prompts.controlnet import ControlNetAddOn, ControlUnit, load_control_lora
from engine.image_prompts.face import face_crop
from engine.image_prompts.ip_adapter import (
    ImageEncoder,
    ImagePromptAddOn,
    IpAdapterModel,
    PromptTokens,
    load_negative,
)
from engine.image_prompts.preprocessors import clip_input, cpds, fit_cover, pyramid_canny
from engine.imaging import image_to_tensor
from engine.models.loading import CheckpointFormatError
from engine.plan import IMAGE_PROMPT_FIELD as FIELD
from engine.plan import Slot, resolve_slots
from engine.types import EngineInputError, EngineRequest

Require = Callable[[str, str], Path]
T = TypeVar("T")


def preprocess(slot: Slot, request: EngineRequest, width: int, height: int) -> Image.Image:
    """What the slot's model sees: the ControlNet hint at the generation size, or the image the
    CLIP tower encodes (FaceSwap's face crop). ``skipping_cn_preprocessor`` only fits sizes."""
    if slot.is_control:
        fitted = fit_cover(slot.image, width, height)
        if request.skipping_cn_preprocessor:
            return fitted
        if slot.cn_type == "PyraCanny":
            return pyramid_canny(fitted, request.canny_low_threshold, request.canny_high_threshold)
        return cpds(fitted)
    if slot.cn_type == "FaceSwap" and not request.skipping_cn_preprocessor:
        return face_crop(slot.image)
    return slot.image


def preprocessed_maps(request: EngineRequest, width: int, height: int) -> list[Image.Image]:
    """``debugging_cn_preprocessor``'s answer: each slot's preprocessed image (CLIP inputs at
    the 224-px size the tower sees)."""
    maps = []
    for slot in resolve_slots(request):
        image = preprocess(slot, request, width, height)
        maps.append(image if slot.is_control else clip_input(image))
    return maps


class ImagePromptModels:
    """The image-prompt models of one engine, loaded on first use and kept."""

    def __init__(self, require: Require, device: torch.device, dtype: torch.dtype) -> None:
        self.require = require
        self.device = device
        self.dtype = dtype
        self._encoder: ImageEncoder | None = None
        self._negative: torch.Tensor | None = None
        self._adapters: dict[str, IpAdapterModel] = {}

    def encoder(self) -> ImageEncoder:
        """The CLIP ViT-H vision tower."""
        if self._encoder is None:
            path = self.require(CLIP_VISION_FOLDER, CLIP_VISION_FILE)
            self._encoder = _loaded(lambda: ImageEncoder(path, self.device, self.dtype))
        return self._encoder

    def negative(self) -> torch.Tensor:
        """Fooocus's negative image-prompt tokens."""
        if self._negative is None:
            path = self.require(CONTROLNET_FOLDER, IP_NEGATIVE_FILE)
            negative = _loaded(lambda: load_negative(path))
            self._negative = negative.to(device=self.device, dtype=self.dtype)
        return self._negative

    def adapter(self, cn_type: str) -> IpAdapterModel:
        """The IP-Adapter of ``cn_type`` (ImagePrompt or FaceSwap)."""
        if cn_type not in self._adapters:
            path = self.require(CONTROLNET_FOLDER, IP_ADAPTER_FILES[cn_type])
            adapter = _loaded(lambda: IpAdapterModel.load(path))
            adapter.resampler.to(device=self.device, dtype=self.dtype)
            self._adapters[cn_type] = adapter
        return self._adapters[cn_type]


def _loaded(load: Callable[[], T]) -> T:
    try:
        return load()
    except CheckpointFormatError as exc:
        raise EngineInputError(FIELD, str(exc)) from exc


@dataclass
class ImagePromptAddOns:
    """What a request's image prompts add to the base model's UNet calls."""

    controls: ControlNetAddOn | None
    prompts: ImagePromptAddOn | None


def build_add_ons(
    models: ImagePromptModels,
    request: EngineRequest,
    unet: UNet2DConditionModel,
    width: int,
    height: int,
) -> ImagePromptAddOns:
    """Preprocess every slot, build its ControlNet or encode its tokens (in inference mode).

    Slots with weight 0 are left out: they would change nothing for a ControlNet, and Fooocus's
    attention formula would still add the mean-free image values for an IP-Adapter.
    """
    units: list[ControlUnit] = []
    tokens: list[PromptTokens] = []
    for slot in resolve_slots(request):
        if slot.weight == 0:
            continue
        image = preprocess(slot, request, width, height)
        if slot.is_control:
            path = models.require(CONTROLNET_FOLDER, CONTROL_LORA_FILES[slot.cn_type])
            controlnet = _loaded(partial(load_control_lora, path, unet))
            units.append(ControlUnit(controlnet, image_to_tensor(image), slot.weight, slot.stop))
            continue
        adapter = models.adapter(slot.cn_type)
        with torch.inference_mode():
            features = models.encoder()(image)
            positive = adapter.resampler(features.to(models.dtype))
        negative = models.negative()
        if negative.shape[-1] != positive.shape[-1]:
            raise EngineInputError(FIELD, "the IP negative tokens do not fit the IP-Adapter")
        tokens.append(PromptTokens(positive, negative, slot.weight, slot.stop, adapter))
    for adapter in {id(t.adapter): t.adapter for t in tokens}.values():
        _loaded(partial(adapter.check_fits, unet))
    return ImagePromptAddOns(
        ControlNetAddOn(units, request.controlnet_softness) if units else None,
        ImagePromptAddOn(tokens) if tokens else None,
    )
