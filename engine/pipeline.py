"""The engine: one request in, images out (text-to-image with Fooocus's sampling and guidance).

:class:`Engine` checks a request before loading anything, resolves the performance preset, loads
the model through the model manager, then for each image: builds the prompt elements (styles,
extra lines), encodes them, samples from seeded noise with the Fooocus denoiser, decodes with the
VAE and reports the image with its metadata. Progress, previews and stop/skip go through the
caller's callbacks; the engine never learns who listens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from engine.components import SDXLComponents
from engine.config import EngineConfig
from engine.guidance import AdmTimeIds, FooocusDenoiser
from engine.metadata import FileHasher, ImageMetadata, LoraRecord
from engine.options import DEFAULT_VAE, METADATA_SCHEMES, NO_MODEL, PERFORMANCES
from engine.plan import Plan, plan_request
from engine.preview import latent_preview
from engine.prompts import PromptEncoder, split_lines
from engine.sampling import (
    StepCallback,
    build_sigmas,
    check_scheduler,
    get_sampler,
    image_seed,
    initial_noise,
    sample,
    scale_initial_noise,
    schedule_for,
)
from engine.styles import StyleLibrary
from engine.types import (
    EngineEvent,
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    FeatureNotSupportedError,
    GeneratedImage,
    StopPoll,
    TaskStopped,
)

LOADING_PROGRESS = 1
PREPARED_PROGRESS = 5  # where sampling starts; steps then share the range up to LAST_PROGRESS
LAST_PROGRESS = 99
LATENT_CHANNELS = 4
LATENT_SCALE = 8


class ModelSource(Protocol):
    """What the engine needs from the model manager (:class:`engine.models.ModelManager`)."""

    def require(self, folder: str, filename: str, on_message: _Message | None = None) -> Path: ...

    def list_files(self, folder: str) -> list[str]: ...

    def load_base(
        self,
        name: str,
        *,
        vae_name: str = DEFAULT_VAE,
        loras: Sequence[tuple[str, float]] = (),
        on_message: _Message | None = None,
    ) -> SDXLComponents: ...


class _Message(Protocol):
    def __call__(self, message: str, /) -> None: ...


class _SkipImage(Exception):
    """The caller asked to skip the image being sampled."""


def pick_device(setting: str) -> torch.device:
    """CUDA when ``setting`` is "auto" and a GPU is present, else the named device (or CPU)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Engine:
    """Runs generation requests; keeps models (through the manager) and styles between them."""

    def __init__(self, config: EngineConfig, *, manager: ModelSource | None = None) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if manager is None:
            from engine.models import ModelManager

            manager = ModelManager(config, self.device, self.dtype)
        self.manager: ModelSource = manager
        self.style_library = StyleLibrary.from_folder(config.styles_dir)
        self.hasher = FileHasher()

    def styles(self) -> list[str]:
        """Every selectable style name (with the 'Fooocus V2' and 'Random Style' pseudo-styles)."""
        return self.style_library.names()

    def check(self, request: EngineRequest) -> None:
        """Raise EngineInputError / FeatureNotSupportedError for anything this engine cannot do.

        Runs before any model loads; each error names the request field at fault.
        """
        for name, value in (("width", request.width), ("height", request.height)):
            if value <= 0 or value % LATENT_SCALE:
                raise EngineInputError(
                    name, f"{name} must be a positive multiple of 8, not {value}"
                )
        if request.image_number < 1:
            raise EngineInputError("image_number", "image_number must be at least 1")
        if request.clip_skip < 1:
            raise EngineInputError("clip_skip", "clip_skip must be at least 1")
        if request.metadata_scheme not in METADATA_SCHEMES:
            raise EngineInputError("metadata_scheme", f"unknown scheme '{request.metadata_scheme}'")
        plan = plan_request(request)
        get_sampler(plan.sampler)
        check_scheduler(plan.scheduler, plan.steps)
        self.style_library.check(request.style_selections)
        self._check_unsupported(request, plan)
        self._check_file("checkpoints", request.base_model_name, "base_model_name")
        if request.vae_name not in (DEFAULT_VAE, NO_MODEL):
            self._check_file("vae", request.vae_name, "vae_name")
        user_loras = len(plan.loras) - (
            1 if PERFORMANCES[request.performance_selection].restricted else 0
        )
        for k, (name, _) in enumerate(plan.loras):
            self._check_file("loras", name, "loras" if k < user_loras else "performance_selection")

    def _check_unsupported(self, request: EngineRequest, plan: Plan) -> None:
        refusals = (
            (
                plan.refiner not in (NO_MODEL, ""),
                "refiner_model_name",
                "refiner is not supported yet",
            ),
            (request.uov_method != "Disabled", "uov_method", "upscale/vary is not supported yet"),
            (
                request.inpaint_input_image is not None,
                "inpaint_input_image",
                "inpaint is not supported yet",
            ),
            (
                bool(request.outpaint_selections),
                "outpaint_selections",
                "outpaint is not supported yet",
            ),
            (bool(request.image_prompts), "image_prompts", "image prompts are not supported yet"),
            (request.freeu_enabled, "freeu_enabled", "FreeU is not supported yet"),
            (request.black_out_nsfw, "black_out_nsfw", "the NSFW check is not supported yet"),
        )
        for refused, field, message in refusals:
            if refused:
                raise FeatureNotSupportedError(field, message)

    def _check_file(self, folder: str, name: str, field: str) -> None:
        if name in self.manager.list_files(folder) or f"{folder}/{name}" in self.config.downloads:
            return
        raise EngineInputError(field, f"{folder} file '{name}' is not available")

    def generate(
        self,
        request: EngineRequest,
        on_event: EventCallback | None = None,
        should_stop: StopPoll | None = None,
    ) -> EngineResult:
        """Generate ``request.image_number`` images; see the module docstring for the flow.

        ``on_event`` receives progress events (with previews unless disabled) and one ``image``
        event per finished image. ``should_stop`` is polled between steps: "stop" returns the images
        so far with ``stopped=True``; "skip" drops the current image and goes on.
        """
        self.check(request)
        return _Run(self, request, on_event, should_stop).execute()


class _Run:
    """The state of one generate() call."""

    def __init__(
        self,
        engine: Engine,
        request: EngineRequest,
        on_event: EventCallback | None,
        should_stop: StopPoll | None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.plan = plan_request(request)
        self.emit = on_event or (lambda event: None)
        self.poll = should_stop or (lambda: None)
        self.images: list[GeneratedImage] = []
        self.progress = 0
        self.done_steps = 0
        self.total_steps = 0

    def report(self, progress: int, message: str, preview: Image.Image | None = None) -> None:
        self.progress = max(self.progress, progress)
        self.emit(EngineEvent("progress", self.progress, message, preview=preview))

    def execute(self) -> EngineResult:
        request, plan = self.request, self.plan
        self.report(LOADING_PROGRESS, "Loading models ...")
        components = self.engine.manager.load_base(
            request.base_model_name,
            vae_name=request.vae_name,
            loras=plan.loras,
            on_message=lambda message: self.report(LOADING_PROGRESS, message),
        )
        # Loading stays outside inference mode: the manager keeps and patches weights across
        # tasks, and tensors created in inference mode could not be updated in place later.
        with torch.inference_mode():
            return self._generate_images(components)

    def _generate_images(self, components: SDXLComponents) -> EngineResult:
        request, plan = self.request, self.plan
        schedule, rule = schedule_for(plan.scheduler)
        sigmas = build_sigmas(rule, plan.steps, schedule)
        steps = len(sigmas) - 1
        self.total_steps = steps * request.image_number
        encoder = PromptEncoder(components, request.clip_skip)
        main, extras = split_lines(request.prompt)
        negative_lines = split_lines(request.negative_prompt)
        count = request.image_number
        for index in range(count):
            seed = image_seed(request.seed, index, increment=not request.disable_seed_increment)
            self.done_steps = index * steps
            self.report(self._step_progress(), f"Preparing task {index + 1}/{count} ...")
            action = self.poll()
            if action == "stop":
                return EngineResult(tuple(self.images), stopped=True)
            if action == "skip":
                continue
            positive, negative, applied = self._elements(seed, (main, extras), negative_lines)
            use_cfg = not math.isclose(plan.guidance.guidance_scale, 1.0)
            denoiser = FooocusDenoiser(
                components.unet,
                schedule,
                plan.guidance,
                encoder.encode(positive),
                encoder.encode(negative) if use_cfg else None,
                AdmTimeIds.for_size(request.height, request.width, plan.adm_positive),
                AdmTimeIds.for_size(request.height, request.width, plan.adm_negative),
            )
            x = self._initial_latent(seed, float(sigmas[0]), schedule.sigma_max)
            x = x.to(components.unet.device)
            try:
                latent = sample(
                    plan.sampler,
                    denoiser,
                    x,
                    sigmas,
                    seed=seed,
                    callback=self._step_callback(index, count, steps),
                )
            except _SkipImage:
                continue
            except TaskStopped:
                return EngineResult(tuple(self.images), stopped=True)
            image = decode_latent(components, latent)
            metadata = self._metadata(
                seed, steps, (main, extras), negative_lines, (positive, negative), applied
            )
            generated = GeneratedImage(index, image, seed, metadata.to_dict())
            self.images.append(generated)
            self.done_steps = (index + 1) * steps
            message = f"Image {index + 1}/{count} finished"
            self.emit(EngineEvent("image", self._step_progress(), message, image=generated))
        return EngineResult(tuple(self.images))

    def _elements(
        self, seed: int, prompt_lines: tuple[str, list[str]], negative_lines: tuple[str, list[str]]
    ) -> tuple[list[str], list[str], list[str]]:
        """Positive and negative prompt elements of one image, and the styles applied (§5.4)."""
        (main, extras), (negative_main, negative_extras) = prompt_lines, negative_lines
        positive, negative, applied = self.engine.style_library.apply(
            self.request.style_selections, main, negative_main, random.Random(seed)
        )
        positive = [p for p in positive + extras if p] or [main]
        negative = [n for n in negative + negative_extras if n] or [negative_main]
        return positive, negative, applied

    def _initial_latent(self, seed: int, first_sigma: float, sigma_max: float) -> torch.Tensor:
        """Seeded CPU float32 noise [1, 4, H/8, W/8] scaled to the first sigma (§2.2)."""
        height, width = self.request.height // LATENT_SCALE, self.request.width // LATENT_SCALE
        noise = initial_noise(seed, (1, LATENT_CHANNELS, height, width))
        return scale_initial_noise(noise, first_sigma, sigma_max)

    def _step_progress(self) -> int:
        fraction = self.done_steps / max(self.total_steps, 1)
        return PREPARED_PROGRESS + int((LAST_PROGRESS - PREPARED_PROGRESS) * fraction)

    def _step_callback(self, index: int, count: int, steps: int) -> StepCallback:
        def on_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            self.done_steps = index * steps + step + 1
            preview = None if self.request.disable_preview else latent_preview(denoised)
            message = f"Sampling step {step + 1}/{steps}, image {index + 1}/{count} ..."
            self.report(self._step_progress(), message, preview)
            action = self.poll()
            if action == "stop":
                raise TaskStopped("stopped by the caller")
            if action == "skip":
                raise _SkipImage()

        return on_step

    def _hashes(self) -> dict[tuple[str, str], str]:
        """Short hashes of the base model and LoRA files, keyed by (folder, name).

        Computed when the first image is done (hashing a large checkpoint the first time takes
        seconds; the hasher caches it for later tasks).
        """
        manager, hasher = self.engine.manager, self.engine.hasher
        wanted = [("checkpoints", self.request.base_model_name)]
        wanted += [("loras", name) for name, _ in self.plan.loras]
        return {key: hasher.short_hash(manager.require(*key)) for key in wanted}

    def _metadata(
        self,
        seed: int,
        steps: int,
        prompt_lines: tuple[str, list[str]],
        negative_lines: tuple[str, list[str]],
        elements: tuple[list[str], list[str]],
        styles: list[str],
    ) -> ImageMetadata:
        request, plan = self.request, self.plan
        hashes = self._hashes()
        return ImageMetadata(
            prompt="\n".join([prompt_lines[0], *prompt_lines[1]]),
            negative_prompt="\n".join([negative_lines[0], *negative_lines[1]]),
            full_prompt=elements[0],
            full_negative_prompt=elements[1],
            styles=styles,
            performance=request.performance_selection,
            steps=steps,
            width=request.width,
            height=request.height,
            guidance_scale=plan.guidance.guidance_scale,
            sharpness=plan.guidance.sharpness,
            adm_guidance=(plan.adm_positive, plan.adm_negative, plan.guidance.adm_scaler_end),
            base_model=request.base_model_name,
            base_model_hash=hashes[("checkpoints", request.base_model_name)],
            sampler=plan.sampler,
            scheduler=plan.scheduler,
            vae=request.vae_name,
            seed=seed,
            scheme=request.metadata_scheme,
            refiner_model=plan.refiner,
            refiner_switch=request.refiner_switch,
            adaptive_cfg=plan.guidance.adaptive_cfg,
            clip_skip=request.clip_skip,
            loras=[LoraRecord(n, w, hashes[("loras", n)]) for n, w in plan.loras],
        )


def decode_latent(components: SDXLComponents, latent: torch.Tensor) -> Image.Image:
    """VAE-decode one latent [1, 4, h, w] (k-space, unscaled) to an RGB image."""
    vae = components.vae
    scaled = latent / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        scaled = scaled + shift
    pixels = vae.decode(scaled.to(device=vae.device, dtype=vae.dtype)).sample[0]
    array = ((pixels.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
