"""The inpaint side of one ``Engine.generate`` call: prepared crop, blend latents, patch and head.

Fooocus's inpaint engine is a weight patch on the UNet plus a head that feeds the masked latent
into the UNet's first convolution. Both are on for the start of each image and off for its last
steps (Fooocus's synthetic refiner); sampling blends the known area back in after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from engine.config import INPAINT_FOLDER, INPAINT_HEAD_FILE, INPAINT_PATCH_FILES
from engine.inpaint.mask import InpaintInput, paste_back, prepare_inpaint
from engine.inpaint.patch import (
    UNPATCHED_FRACTION,
    BlendingDenoiser,
    InpaintPatch,
    head_features,
    head_hook,
    latent_mask,
    load_head,
    load_patch,
)
from engine.models.components import SDXLComponents
from engine.options import NO_MODEL
from engine.sampling import Denoiser, StepCallback
from engine.types import EngineRequest
from engine.vae import LatentFormat, encode_to_latent

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

    from engine.models.source import ModelSource


class InpaintRun:
    """The inpaint state of one request; :meth:`prepare` builds it before sampling starts."""

    def __init__(
        self,
        prepared: InpaintInput,
        fill: torch.Tensor,
        cells: torch.Tensor,
        head: torch.Tensor | None,
        patch: InpaintPatch | None,
    ) -> None:
        self.input = prepared
        self.fill = fill  # the latent of the filled crop: blend target and initial latent
        self.cells = cells  # the mask at latent resolution
        self.head = head
        self.patch = patch
        # A one-element list because head_hook reads it at every UNet call: the hook is
        # installed once per request, switched per image and per step.
        self.head_active = [False]

    @classmethod
    def prepare(
        cls,
        manager: ModelSource,
        request: EngineRequest,
        components: SDXLComponents,
        super_resolve: Callable[[Image.Image], Image.Image],
        on_message: Callable[[str], None],
        *,
        latent_format: LatentFormat | None = None,
    ) -> InpaintRun:
        """Mask, crop and encode the inpaint input; load the inpaint engine's patch and head."""
        prepared = prepare_inpaint(request, components.native_size, super_resolve)
        on_message("VAE Inpaint encoding ...")
        mask = torch.from_numpy(prepared.crop_mask.astype("float32") / 255.0)[None, None]
        crop = np.asarray(prepared.crop).copy()
        crop[prepared.crop_mask > 127] = 127
        head = None
        with torch.inference_mode():
            fill = encode_to_latent(components, prepared.crop_fill, latent_format=latent_format)
            masked = encode_to_latent(
                components, Image.fromarray(crop), latent_format=latent_format
            )
            cells = latent_mask(mask, (fill.shape[2], fill.shape[3]))
            if request.inpaint_engine != NO_MODEL:
                path = manager.require(INPAINT_FOLDER, INPAINT_HEAD_FILE, on_message)
                head = head_features(load_head(path), cells, masked)
        patch = None
        if request.inpaint_engine != NO_MODEL:
            name = INPAINT_PATCH_FILES[request.inpaint_engine]
            path = manager.require(INPAINT_FOLDER, name, on_message)
            on_message(f"Loading inpaint patch {name} ...")
            patch = InpaintPatch(components.unet, load_patch(path, components.unet))
        return cls(prepared, fill, cells, head, patch)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the crop that is sampled."""
        return self.input.crop.size

    @contextmanager
    def installed(self, unet: UNet2DConditionModel) -> Iterator[None]:
        """Hook the head into ``unet`` for the request; always take the patch off at the end."""
        hook = head_hook(unet, self.head, self.head_active) if self.head is not None else None
        try:
            with hook or nullcontext():
                yield
        finally:
            if self.patch is not None:
                self.patch.remove()

    def blended(self, model: Denoiser, seed: int) -> Denoiser:
        """``model`` with the known area blended back in after each step."""
        return BlendingDenoiser(model, self.fill, self.cells, seed)

    def start(self) -> None:
        """Patch and head on for the start of each image's sampling."""
        if self.patch is not None:
            self.patch.apply()
        self.head_active[0] = self.head is not None

    def step_callback(self, callback: StepCallback, steps: int) -> StepCallback:
        """Take the inpaint patch and head off for the last steps (Fooocus's synthetic refiner)."""
        if self.patch is None and self.head is None:
            return callback
        off_after = max(1, round(steps * (1.0 - UNPATCHED_FRACTION)))

        def on_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            if step + 1 == off_after:
                self.head_active[0] = False
                if self.patch is not None:
                    self.patch.remove()
            callback(step, x, denoised)

        return on_step

    def paste_back(self, image: Image.Image, native: int) -> Image.Image:
        """The decoded crop pasted into the original image outside the mask."""
        return paste_back(self.input, image, native)
