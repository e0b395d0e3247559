"""Enhance (Fooocus 2.5 ``async_worker``'s enhance part, reference fooocus_engine §8.6).

Each image to enhance (the uploaded one, or every image the request generates) goes through:
an optional Vary/Upscale "Before First Enhancement"; then each region in turn — its mask from a
background-removal model or GroundingDINO + SAM, eroded/dilated and inverted as asked, inpainted
with the region's prompts (empty = the request's), engine, strength and respective field — each
region working on the previous region's result; then an optional Vary/Upscale "After Last
Enhancement", with the original prompts or the last region prompts that were filled in.

Every step is an ordinary one-image engine run (inpaint or upscale/vary) with the image's seed,
so the inpaint paste-back guarantees that pixels away from a region keep their exact values.
Intermediate images are reported unless ``save_final_enhanced_image_only``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

from engine.tools.masks import erode_or_dilate, invert
from engine.tools.models import ToolModels
from engine.tools.types import (
    ENHANCE_PROMPT_LAST_FILLED,
    ENHANCE_UOV_AFTER,
    ENHANCE_UOV_BEFORE,
    EnhanceRegion,
    EnhanceSpec,
    MaskRequest,
)
from engine.types import (
    EngineEvent,
    EngineRequest,
    EngineResult,
    EventCallback,
    GeneratedImage,
    StopPoll,
)

# One engine run: request in, result out, events and stop polls through the given callables.
RunRequest = Callable[[EngineRequest, EventCallback, StopPoll], EngineResult]


def enhance_prompt(prompt: str, fallback: str) -> str:
    """The region's prompt, or ``fallback`` when it has no non-blank line (Fooocus's rule)."""
    return prompt if any(line.strip() for line in prompt.splitlines()) else fallback


def region_mask(
    tools: ToolModels, image: Image.Image, region: EnhanceRegion, spec: EnhanceSpec
) -> tuple[np.ndarray, bool]:
    """The region's uint8 0..255 mask of ``image`` and whether it has anything to inpaint."""
    request = MaskRequest(
        image,
        mask_model=region.mask_model,
        cloth_category=region.cloth_category,
        dino_prompt_text=region.mask_dino_prompt,
        sam_model=region.sam_model,
        box_threshold=region.box_threshold,
        text_threshold=region.text_threshold,
        sam_max_detections=region.sam_max_detections,
        dino_erode_or_dilate=spec.dino_erode_or_dilate,
        dino_debug=spec.debugging_dino,
    )
    result = tools.mask(request)
    mask = np.asarray(result.mask.convert("L"), dtype=np.uint8)
    mask = erode_or_dilate(mask, region.inpaint_erode_or_dilate)
    if region.mask_invert:
        mask = invert(mask)
    found = True
    if region.mask_model == "sam":
        found = result.dino_detections > 0 and (spec.debugging_dino or result.sam_applied > 0)
    return mask, found and bool((mask > 127).any())


class EnhanceRun:
    """One enhance request: the base run (unless an input image is given), then the steps."""

    def __init__(
        self,
        request: EngineRequest,
        tools: ToolModels,
        run: RunRequest,
        on_event: EventCallback | None,
        should_stop: StopPoll | None,
    ) -> None:
        assert request.enhance is not None
        self.request = dataclasses.replace(request, enhance=None)
        self.spec: EnhanceSpec = request.enhance
        self.tools = tools
        self.run = run
        self.emit = on_event or (lambda event: None)
        self.poll = should_stop or (lambda: None)
        self.reported: list[GeneratedImage] = []
        self.progress = 0
        uov = self.spec.uov_method != "Disabled"
        self.tabs = len(self.spec.regions) + (1 if uov else 0)
        self.uov_before = uov and self.spec.uov_processing_order == ENHANCE_UOV_BEFORE
        self.uov_after = uov and self.spec.uov_processing_order == ENHANCE_UOV_AFTER
        images = 1 if self.spec.input_image is not None else request.image_number
        base = 0 if self.spec.input_image is not None else 1
        self.units = max(base + images * self.tabs, 1)
        self.done_units = 0

    # Reporting ---------------------------------------------------------------------------
    def _report(self, progress: int, message: str, preview: Image.Image | None = None) -> None:
        self.progress = max(self.progress, min(progress, 99))
        self.emit(EngineEvent("progress", self.progress, message, preview=preview))

    def _unit_progress(self, inner: int) -> int:
        return int(100 * (self.done_units + inner / 100) / self.units)

    def _add_image(
        self, image: Image.Image, seed: int, metadata: dict[str, object], message: str
    ) -> None:
        generated = GeneratedImage(len(self.reported), image, seed, metadata)
        self.reported.append(generated)
        self.emit(EngineEvent("image", self.progress, message, image=generated))

    def _sub_run(self, request: EngineRequest, persist: bool) -> EngineResult:
        """One engine run inside this one's progress range; its image is reported when
        ``persist``."""

        def forward(event: EngineEvent) -> None:
            if event.kind == "image":
                return
            self._report(self._unit_progress(event.progress), event.message, event.preview)

        result = self.run(request, forward, self.poll)
        self.done_units += 1
        if persist:
            for image in result.images:
                self._add_image(image.image, image.seed, image.metadata, "Enhanced image saved")
        return result

    # The flow ----------------------------------------------------------------------------
    def execute(self) -> EngineResult:
        """Run the whole request; ``stopped`` when the caller stopped it."""
        spec = self.spec
        if spec.input_image is not None:
            sources = [(spec.input_image.convert("RGB"), self.request.seed)]
        else:
            base = self._sub_run(self.request, persist=not spec.save_final_enhanced_image_only)
            if base.stopped:
                return EngineResult(tuple(self.reported), stopped=True)
            sources = [(image.image, image.seed) for image in base.images]
        self._report(self._unit_progress(0), "Processing enhance ...")
        total = len(sources) * self.tabs
        step = 0
        for image, seed in sources:
            stopped, step = self._enhance_one(image, seed, step, total)
            if stopped:
                return EngineResult(tuple(self.reported), stopped=True)
        return EngineResult(tuple(self.reported))

    def _enhance_one(
        self, image: Image.Image, seed: int, step: int, total: int
    ) -> tuple[bool, int]:
        spec, request = self.spec, self.request
        final_only = spec.save_final_enhanced_image_only
        prompt, negative = request.prompt, request.negative_prompt
        last_prompt, last_negative = prompt, negative
        count = len(self.reported)
        if self.uov_before:
            step += 1
            self._report(self._unit_progress(0), f"Preparing enhancement {step}/{total} ...")
            result = self._sub_run(
                self._uov_request(image, seed, prompt, negative),
                persist=not final_only or not spec.regions,
            )
            if result.stopped:
                return True, step
            if result.images:
                image = result.images[0].image
        for index, region in enumerate(spec.regions):
            step += 1
            self._report(self._unit_progress(0), f"Preparing enhancement {step}/{total} ...")
            mask, found = region_mask(self.tools, image, region, spec)
            if spec.debugging_enhance_masks:
                self._add_image(Image.fromarray(mask).convert("RGB"), seed, {}, "Enhance mask")
            if not found:
                self._report(
                    self._unit_progress(0), f"Enhancement {step}/{total}: nothing found, skipped"
                )
                self.done_units += 1
                continue
            last = index == len(spec.regions) - 1 and not self.uov_after
            region_prompt = enhance_prompt(region.prompt, prompt)
            region_negative = enhance_prompt(region.negative_prompt, negative)
            result = self._sub_run(
                self._inpaint_request(image, mask, seed, region, region_prompt, region_negative),
                persist=not final_only or last,
            )
            if result.stopped:
                return True, step
            if result.images:
                image = result.images[0].image
                if spec.uov_prompt_type == ENHANCE_PROMPT_LAST_FILLED:
                    last_prompt = region_prompt if region.prompt.strip() else last_prompt
                    last_negative = (
                        region_negative if region.negative_prompt.strip() else last_negative
                    )
        if self.uov_after:
            step += 1
            self._report(self._unit_progress(0), f"Preparing enhancement {step}/{total} ...")
            result = self._sub_run(
                self._uov_request(image, seed, last_prompt, last_negative), persist=True
            )
            if result.stopped:
                return True, step
        elif final_only and len(self.reported) == count:
            # Every region was skipped: the (possibly varied/upscaled) image is the final one.
            self._add_image(image, seed, {}, "Enhanced image saved")
        return False, step

    # The one-image requests --------------------------------------------------------------
    def _single(self, seed: int, prompt: str, negative: str) -> EngineRequest:
        return dataclasses.replace(
            self.request,
            image_number=1,
            seed=seed,
            disable_seed_increment=True,
            prompt=prompt,
            negative_prompt=negative,
            uov_method="Disabled",
            uov_input_image=None,
            inpaint_input_image=None,
            inpaint_mask_image=None,
            inpaint_additional_prompt="",
            outpaint_selections=(),
            image_prompts=(),
            invert_mask_checkbox=False,
            inpaint_erode_or_dilate=0,
            debugging_inpaint_preprocessor=False,
            debugging_cn_preprocessor=False,
        )

    def _uov_request(
        self, image: Image.Image, seed: int, prompt: str, negative: str
    ) -> EngineRequest:
        return dataclasses.replace(
            self._single(seed, prompt, negative),
            uov_method=self.spec.uov_method,
            uov_input_image=image,
            width=image.width,
            height=image.height,
        )

    def _inpaint_request(
        self,
        image: Image.Image,
        mask: np.ndarray,
        seed: int,
        region: EnhanceRegion,
        prompt: str,
        negative: str,
    ) -> EngineRequest:
        return dataclasses.replace(
            self._single(seed, prompt, negative),
            inpaint_input_image=image,
            inpaint_mask_image=Image.fromarray(mask),
            inpaint_engine=region.inpaint_engine,
            inpaint_strength=region.inpaint_strength,
            inpaint_respective_field=region.inpaint_respective_field,
            inpaint_disable_initial_latent=region.inpaint_disable_initial_latent,
        )
