"""One ``Engine.generate`` call: load, then per image prompt → encode → sample → decode → check.

The pieces live beside it: :mod:`engine.inpaint.run` (the inpaint engine), :mod:`engine.uov.rules`
(Vary/Upscale), :mod:`engine.refiner` (the refiner swap) and :mod:`engine.output.image_metadata`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from engine.freeu import freeu
from engine.guidance import AdmTimeIds, FooocusDenoiser, TextConditioning, UNetAddOn
from engine.image_prompts.slots import (
    ImagePromptAddOns,
    build_add_ons,
    preprocessed_maps,
    resolve_slots,
)
from engine.imaging import crop_to_multiple
from engine.inpaint.mask import inpaint_prompt
from engine.inpaint.run import InpaintRun
from engine.memory import UNET, DevicePlacer, modules_in
from engine.models.components import SDXLComponents
from engine.options import NO_MODEL
from engine.output.image_metadata import image_metadata, model_hashes
from engine.output.preview import latent_preview
from engine.plan import Plan, plan_request, refiner_switch_step
from engine.prompts.encoding import PromptEncoder
from engine.prompts.per_image import Expand, ImageTask, build_image_task
from engine.prompts.styles import FOOOCUS_V2
from engine.refiner import sample_with_refiner, sampler_sigmas
from engine.sampling import (
    PLAYGROUND_SCHEDULER,
    Denoiser,
    NoiseSampler,
    NoiseSchedule,
    StepCallback,
    get_sampler,
    image_seed,
    initial_noise,
    make_noise,
    scale_initial_noise,
    schedule_for,
)
from engine.types import (
    EngineEvent,
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    GeneratedImage,
    StopPoll,
    TaskStopped,
)
from engine.uov.rules import UovInput, direct_metadata, prepare_uov, tail_sigmas
from engine.vae import LatentFormat, decode_latent, encode_to_latent

if TYPE_CHECKING:
    from engine.image_prompts.slots import ImagePromptModels
    from engine.models.source import Message, ModelSource
    from engine.output.metadata import FileHasher
    from engine.output.safety import SafetyFilter
    from engine.prompts.embeddings import EmbeddingLibrary
    from engine.prompts.expansion import PromptExpansion
    from engine.prompts.styles import StyleLibrary
    from engine.prompts.syntax import Wildcards
    from engine.uov.upscaler import Upscaler

LOADING_PROGRESS = 1
PREPARED_PROGRESS = 5  # where sampling starts; steps then share the range up to LAST_PROGRESS
LAST_PROGRESS = 99
LATENT_CHANNELS = 4
LATENT_SCALE = 8


REFINER_AESTHETIC_POSITIVE = 6.0
REFINER_AESTHETIC_NEGATIVE = 2.5


def refiner_context_width(base: SDXLComponents, refiner: SDXLComponents) -> int:
    """The width of the text tokens the refiner gets from the base's encoding."""
    if refiner.clip_g_only:
        return int(base.text_encoder_2.config.hidden_size)
    return int(base.unet.config.cross_attention_dim)


def clip_g_part(cond: TextConditioning, width: int) -> TextConditioning:
    """The CLIP-G features of a base conditioning: the last ``width`` features of each token
    (the two encoders' outputs are concatenated CLIP-L first) and the pooled vector."""
    return TextConditioning(cond.embeds[..., -width:], cond.pooled)


UNBATCHED_SAMPLERS = frozenset({"dpm_adaptive"})
"""Samplers whose step sizes follow an error norm over the whole latent: a batch would change
every image's steps, so their images run one by one."""


@dataclass(frozen=True)
class _Prepared:
    """One image ready to sample: its index, seed, prompt task, encodings and start latent."""

    index: int
    seed: int
    task: ImageTask
    positive: TextConditioning
    negative: TextConditioning | None
    x: torch.Tensor


def _stackable(group: list[_Prepared]) -> bool:
    """Whether the group's encodings stack into one batch (same token and pooled shapes)."""
    first = group[0]
    return all(
        item.positive.embeds.shape == first.positive.embeds.shape
        and (item.negative is None) == (first.negative is None)
        and (item.negative is None or item.negative.embeds.shape == first.negative.embeds.shape)  # type: ignore[union-attr]
        for item in group
    )


def _stack(conds: list[TextConditioning | None]) -> TextConditioning:
    kept = [c for c in conds if c is not None]
    return TextConditioning(
        torch.cat([c.embeds for c in kept]), torch.cat([c.pooled for c in kept])
    )


class _AsyncPreview:
    """The step previews' device-to-host copies, collected only once they have finished."""

    def __init__(self) -> None:
        self._copy: torch.Tensor | None = None
        self._done: torch.cuda.Event | None = None

    def swap(self, denoised: torch.Tensor) -> torch.Tensor | None:
        """Start copying ``denoised``; return the latest finished copy (on the CPU: this one)."""
        if denoised.device.type != "cuda":
            return denoised
        ready = None
        if self._copy is not None and self._done is not None and self._done.query():
            ready, self._copy = self._copy, None
        if self._copy is None:  # one copy in flight at a time
            self._copy = denoised.detach().to("cpu", non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record()
        return ready


class _SkipImage(Exception):
    """The caller asked to skip the image being sampled."""


@dataclass(frozen=True)
class RunResources:
    """What one request's run may use, handed over by :class:`engine.pipeline.Engine`.

    The helper models are callables: each loads (and downloads) its model on first use and keeps
    it for later requests; the callable takes the run's message sink for download messages.
    """

    models: ModelSource
    placer: DevicePlacer
    hasher: FileHasher
    style_library: StyleLibrary
    wildcards: Wildcards
    embedding_library: Callable[[], EmbeddingLibrary]
    expansion_model: Callable[[Message], PromptExpansion]
    image_prompt_models: Callable[[Message], ImagePromptModels]
    upscaler: Callable[[Message], Upscaler]
    safety_filter: Callable[[Message], SafetyFilter]
    batch_images: bool = False
    """Sample the images of a request together (as the memory plan allows)."""


class RequestRun:
    """The state of one generate() call."""

    def __init__(
        self,
        resources: RunResources,
        request: EngineRequest,
        on_event: EventCallback | None,
        should_stop: StopPoll | None,
    ) -> None:
        self.resources = resources
        if request.inpaint_input_image is not None:
            request = dataclasses.replace(request, prompt=inpaint_prompt(request))
        self.request = request
        self.plan: Plan = plan_request(request, resources.models.list_files("loras"))
        self.emit = on_event or (lambda event: None)
        self.poll = should_stop or (lambda: None)
        self.images: list[GeneratedImage] = []
        self.progress = 0
        self.done_steps = 0
        self.total_steps = 0
        # What sampling starts from: a full denoise from noise unless an image input says else.
        self.steps = self.plan.steps
        self.switch = self.plan.switch
        self.denoise = 1.0
        self.init_latent: torch.Tensor | None = None
        self.tiled_vae = False
        # Set once the base model is loaded; Playground's when sampling with its EDM scheduler.
        self.latent_format: LatentFormat | None = None
        self.inpaint: InpaintRun | None = None
        self.add_ons = ImagePromptAddOns(None, None)

    def report(self, progress: int, message: str, preview: Image.Image | None = None) -> None:
        self.progress = max(self.progress, progress)
        self.emit(EngineEvent("progress", self.progress, message, preview=preview))

    def _message(self, message: str) -> None:
        self.report(LOADING_PROGRESS, message)

    def execute(self) -> EngineResult:
        components, refiner, expand = self.load()
        return self._execute_loaded(components, refiner, expand)

    def load(self) -> tuple[SDXLComponents, SDXLComponents | None, Expand | None]:
        """Load the base model (and refiner, prompt expansion) this request runs on."""
        request, plan = self.request, self.plan
        self.report(LOADING_PROGRESS, "Loading models ...")
        components = self.resources.models.load_base(
            request.base_model_name,
            vae_name=request.vae_name,
            loras=plan.loras,
            on_message=self._message,
        )
        self.latent_format = LatentFormat.of_vae(
            components.vae, playground=plan.scheduler == PLAYGROUND_SCHEDULER
        )
        refiner = None
        if plan.refiner != NO_MODEL:
            refiner = self.resources.models.load_refiner(
                plan.refiner, loras=plan.loras, on_message=self._message
            )
            width = refiner_context_width(components, refiner)
            if refiner.unet.config.cross_attention_dim != width:
                raise EngineInputError(
                    "refiner_model_name",
                    f"the refiner {plan.refiner} does not fit the base model "
                    f"(it attends to {refiner.unet.config.cross_attention_dim}-wide text tokens, "
                    f"the base gives {width})",
                )
        expand: Expand | None = None
        if FOOOCUS_V2 in request.style_selections and plan.lines.main:
            self.report(LOADING_PROGRESS, "Loading prompt expansion ...")
            expand = self.resources.expansion_model(self._message)
        return components, refiner, expand

    def _execute_loaded(
        self, components: SDXLComponents, refiner: SDXLComponents | None, expand: Expand | None
    ) -> EngineResult:
        request = self.request
        if request.inpaint_input_image is not None:
            self._prepare_inpaint(components)
            if request.debugging_inpaint_preprocessor:
                return self._inpaint_preprocessor_result()
        elif request.uov_method != "Disabled" and request.uov_input_image is not None:
            prepared = self._prepare_uov(components)
            if prepared.denoise is None:
                return self._direct_result(prepared)
        if request.image_prompts:
            if request.debugging_cn_preprocessor:
                return self._preprocessor_result()
            self.report(LOADING_PROGRESS, "Loading image prompts ...")
            models = self.resources.image_prompt_models(self._message)
            self.add_ons = build_add_ons(
                models,
                self.request,
                components.unet,
                self.request.width,
                self.request.height,
            )
            self._place_image_prompt_models(models)
        # Loading stays outside inference mode: the manager keeps and patches weights across
        # tasks, and tensors created in inference mode could not be updated in place later.
        with ExitStack() as stack:
            if self.inpaint is not None:
                stack.enter_context(self.inpaint.installed(components.unet))
            if self.add_ons.prompts is not None:
                stack.enter_context(self.add_ons.prompts.installed(components.unet))
            stack.enter_context(torch.inference_mode())
            return self._generate_images(components, refiner, expand)

    def _place_image_prompt_models(self, models: ImagePromptModels) -> None:
        """Hand the image-prompt models to the memory plan (they were loaded on the device):
        the CLIP vision tower and the IP-Adapters' resamplers are kept between requests, this
        request's ControlNets replace the last one's. The IP-Adapters' attention weights live in
        the UNet's processors while installed, so they go where the UNet goes."""
        placer = self.resources.placer
        slots = [s for s in resolve_slots(self.request) if s.weight]
        ip_types = sorted({s.cn_type for s in slots if not s.is_control})
        if ip_types:
            placer.register("clip_vision", modules_in(models.encoder()))
            placer.register("ip_adapter", [models.adapter(t).resampler for t in ip_types])
        controls = self.add_ons.controls
        placer.register("controlnet", [u.model for u in controls.units] if controls else [])

    def _super_resolve(self, image: Image.Image) -> Image.Image:
        upscaler = self.resources.upscaler(self._message)
        self.report(LOADING_PROGRESS, "Upscaling image ...")
        return upscaler(image)

    def _prepare_inpaint(self, components: SDXLComponents) -> None:
        """Prepare the inpaint engine; sample its crop, from its fill unless asked otherwise."""
        request = self.request
        self.inpaint = InpaintRun.prepare(
            self.resources.models,
            request,
            components,
            self._super_resolve,
            self._message,
            latent_format=self.latent_format,
        )
        self.init_latent = None if request.inpaint_disable_initial_latent else self.inpaint.fill
        self.denoise = self.inpaint.input.denoise
        width, height = self.inpaint.size
        self.request = dataclasses.replace(request, width=width, height=height)

    def _prepare_uov(self, components: SDXLComponents) -> UovInput:
        """Size the Vary/Upscale input, encode it and set the partial-denoise start."""
        request = self.request
        native = components.native_size

        prepared = prepare_uov(request, native, self.plan.steps, self._super_resolve)
        if prepared.denoise is None:
            return prepared
        image = crop_to_multiple(prepared.image)
        self.report(LOADING_PROGRESS, "VAE encoding ...")
        with torch.inference_mode():
            self.init_latent = encode_to_latent(
                components,
                image,
                tiled=prepared.tiled,
                latent_format=self.latent_format,
                plan=self.resources.placer.plan,
            )
        width, height = image.size
        self.request = dataclasses.replace(request, width=width, height=height)
        self.steps = prepared.steps
        self.denoise = prepared.denoise
        self.tiled_vae = prepared.tiled
        if self.plan.refiner != NO_MODEL:
            self.switch = refiner_switch_step(
                prepared.steps, request.refiner_switch, request.overwrite_switch
            )
        return prepared

    def _preprocessor_result(self) -> EngineResult:
        """``debugging_cn_preprocessor``: the preprocessed image-prompt maps are the answer."""
        request = self.request
        maps = preprocessed_maps(request, request.width, request.height)
        return self._answer(maps, {}, "Preprocessor result")

    def _inpaint_preprocessor_result(self) -> EngineResult:
        """``debugging_inpaint_preprocessor``: what the sampler would start from, as Fooocus
        shows it: the filled crop, its mask, and the crop itself."""
        assert self.inpaint is not None
        prepared = self.inpaint.input
        mask = Image.fromarray(prepared.crop_mask).convert("RGB")
        images = [prepared.crop_fill.convert("RGB"), mask, prepared.crop.convert("RGB")]
        return self._answer(images, {}, "Inpaint preprocessor result")

    def _direct_result(self, prepared: UovInput) -> EngineResult:
        """Fast 2x, or an upscale too large to diffuse: the super-resolved image is the answer."""
        metadata = direct_metadata(self.request, prepared)
        return self._answer([prepared.image], metadata, "Upscale finished")

    def _answer(
        self, images: list[Image.Image], metadata: dict[str, object], message: str
    ) -> EngineResult:
        """Images that are the answer without sampling, each reported as it is added."""
        for index, image in enumerate(images):
            generated = GeneratedImage(index, image, self.request.seed, metadata)
            self.images.append(generated)
            self.emit(EngineEvent("image", LAST_PROGRESS, message, image=generated))
        return EngineResult(tuple(self.images))

    def _generate_images(
        self, components: SDXLComponents, refiner: SDXLComponents | None, expand: Expand | None
    ) -> EngineResult:
        request, plan = self.request, self.plan
        schedule, rule = schedule_for(plan.scheduler)
        sigmas = tail_sigmas(
            lambda n: sampler_sigmas(plan.sampler, rule, n, schedule), self.steps, self.denoise
        )
        steps = len(sigmas) - 1
        self.total_steps = steps * request.image_number
        encoder = PromptEncoder(
            components,
            request.clip_skip,
            self.resources.embedding_library(),
            lambda note: self.report(self.progress, note),
        )
        count = request.image_number
        batch_size = self._batch_size()
        use_cfg = not math.isclose(plan.guidance.guidance_scale, 1.0)
        index = 0
        while index < count:
            self.done_steps = index * steps
            self.report(self._step_progress(), f"Preparing task {index + 1}/{count} ...")
            action = self.poll()
            if action == "stop":
                return EngineResult(tuple(self.images), stopped=True)
            if action == "skip":
                index += 1
                continue
            group: list[_Prepared] = []
            for k in range(index, min(index + batch_size, count)):
                group.append(self._prepare_image(k, encoder, expand, use_cfg, sigmas, schedule))
                if not _stackable(group):
                    group.pop()
                    break
            try:
                latents = self._sample_group(components, refiner, schedule, sigmas, group)
            except _SkipImage:
                index += len(group)
                continue
            except TaskStopped:
                return EngineResult(tuple(self.images), stopped=True)
            for item, latent in zip(group, latents, strict=True):
                self._finish_image(components, item, latent[None], steps, count)
            index += len(group)
        return EngineResult(tuple(self.images))

    def _batch_size(self) -> int:
        """Images per UNet call: as many as the memory plan allows when batching is on, and only
        for runs whose per-image state is the noise and the prompt (no inpaint blend, image
        prompts, or adaptive step sizes that would depend on the whole batch)."""
        request, placer = self.request, self.resources.placer
        if not self.resources.batch_images or request.image_number < 2:
            return 1
        if self.inpaint is not None or self.add_ons.prompts or self.add_ons.controls:
            return 1
        if self.plan.sampler in UNBATCHED_SAMPLERS:
            return 1
        if placer.plan is None:
            return request.image_number
        guided = not math.isclose(self.plan.guidance.guidance_scale, 1.0)
        h, w = request.height // LATENT_SCALE, request.width // LATENT_SCALE
        return placer.plan.max_batch(h, w, guided=guided, wanted=request.image_number)

    def _prepare_image(
        self,
        index: int,
        encoder: PromptEncoder,
        expand: Expand | None,
        use_cfg: bool,
        sigmas: list[float],
        schedule: NoiseSchedule,
    ) -> _Prepared:
        request, plan = self.request, self.plan
        seed = image_seed(request.seed, index, increment=not request.disable_seed_increment)
        task = build_image_task(
            index=index,
            seed=seed,
            lines=plan.lines,
            styles=request.style_selections,
            library=self.resources.style_library,
            wildcards=self.resources.wildcards,
            in_order=request.read_wildcards_in_order,
            expand=expand,
        )
        positive = encoder.encode(task.positive, task.pooled_count)
        negative = encoder.encode(task.negative) if use_cfg else None
        x = self._initial_latent(seed, sigmas[0], schedule.sigma_max)
        return _Prepared(index, seed, task, positive, negative, x)

    def _sample_group(
        self,
        components: SDXLComponents,
        refiner: SDXLComponents | None,
        schedule: NoiseSchedule,
        sigmas: list[float],
        group: list[_Prepared],
    ) -> torch.Tensor:
        """Sample a group of images in one batch; each keeps its seed's noise and its prompt."""
        device = self.resources.placer.device
        first = group[0]
        if len(group) == 1:
            conds = (first.positive, first.negative)
            x = first.x.to(device)
            return self._sample(
                (components, refiner), schedule, sigmas, conds, x, first.seed, first.index
            )
        positive = _stack([item.positive for item in group])
        negative = None if first.negative is None else _stack([item.negative for item in group])
        x = torch.cat([item.x for item in group]).to(device)
        kind = get_sampler(self.plan.sampler).noise
        sources = [make_noise(kind, item.x.to(device), sigmas, item.seed) for item in group]

        def noise(sigma: float, sigma_next: float) -> torch.Tensor:
            return torch.cat([source(sigma, sigma_next) for source in sources])

        return self._sample(
            (components, refiner),
            schedule,
            sigmas,
            (positive, negative),
            x,
            first.seed,
            first.index,
            noise=noise,
            batch=len(group),
        )

    def _finish_image(
        self,
        components: SDXLComponents,
        item: _Prepared,
        latent: torch.Tensor,
        steps: int,
        count: int,
    ) -> None:
        request, plan = self.request, self.plan
        image = decode_latent(
            components,
            latent,
            tiled=self.tiled_vae,
            latent_format=self.latent_format,
            plan=self.resources.placer.plan,
        )
        if self.inpaint is not None:
            image = self.inpaint.paste_back(image, components.native_size)
        if request.black_out_nsfw:
            self.report(self._step_progress(), "Checking for NSFW content ...")
            image = self.resources.safety_filter(self._message)([image])[0][0]
        hashes = model_hashes(self.resources.models, self.resources.hasher, request, plan)
        metadata = image_metadata(request, plan, item.task, steps, hashes)
        generated = GeneratedImage(item.index, image, item.seed, metadata.to_dict())
        self.images.append(generated)
        self.done_steps = (item.index + 1) * steps
        message = f"Image {item.index + 1}/{count} finished"
        self.emit(EngineEvent("image", self._step_progress(), message, image=generated))

    def _denoiser(
        self,
        unet_of: SDXLComponents,
        schedule: NoiseSchedule,
        conds: tuple[TextConditioning, TextConditioning | None],
        add_ons: tuple[UNetAddOn, ...] = (),
    ) -> FooocusDenoiser:
        request, plan = self.request, self.plan
        height, width = request.height, request.width
        if unet_of.clip_g_only:
            # The official refiner sees the CLIP-G part of the base's encoding (the base's CLIP,
            # LoRAs included, as Fooocus does) and aesthetic scores instead of target sizes.
            g = int(unet_of.unet.config.cross_attention_dim)  # checked to be CLIP-G's at load
            conds = (
                clip_g_part(conds[0], g),
                None if conds[1] is None else clip_g_part(conds[1], g),
            )
            positive = AdmTimeIds.for_refiner(height, width, REFINER_AESTHETIC_POSITIVE)
            negative = AdmTimeIds.for_refiner(height, width, REFINER_AESTHETIC_NEGATIVE)
        else:
            positive = AdmTimeIds.for_size(height, width, plan.adm_positive)
            negative = AdmTimeIds.for_size(height, width, plan.adm_negative)
        return FooocusDenoiser(
            unet_of.unet,
            schedule,
            plan.guidance,
            conds[0],
            conds[1],
            positive,
            negative,
            add_ons,
        )

    def _sample(
        self,
        models: tuple[SDXLComponents, SDXLComponents | None],
        schedule: NoiseSchedule,
        sigmas: list[float],
        conds: tuple[TextConditioning, TextConditioning | None],
        x: torch.Tensor,
        seed: int,
        index: int,
        *,
        noise: NoiseSampler | None = None,
        batch: int = 1,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        request, plan = self.request, self.plan
        components, refiner = models
        steps = len(sigmas) - 1
        placer = self.resources.placer
        rows = x.shape[0] * (1 if conds[1] is None else 2)
        placer.check_fits(rows, x.shape[-2], x.shape[-1], refiner=refiner is not None)
        # Back on the device if the refiner's (or a text encoder's) turn moved it out, with room
        # for the UNet's working memory.
        placer.ensure(UNET, placer.sizes().unet_work(rows, x.shape[-2], x.shape[-1]))
        # Image prompts act on the base model only, never on the refiner (§14.13).
        add_ons = tuple(a for a in (self.add_ons.controls, self.add_ons.prompts) if a is not None)
        base = self._denoiser(components, schedule, conds, add_ons)
        second = self._denoiser(refiner, schedule, conds) if refiner is not None else None
        use_freeu = request.freeu_enabled
        patch = (
            freeu(
                components.unet,
                request.freeu_b1,
                request.freeu_b2,
                request.freeu_s1,
                request.freeu_s2,
            )
            if use_freeu
            else nullcontext()
        )
        callback = callback or self._step_callback(index, request.image_number, steps, batch)
        if self.inpaint is not None:
            callback = self.inpaint.step_callback(callback, self.steps)
            self.inpaint.start()
        return sample_with_refiner(
            plan.sampler,
            (base, second),
            x,
            sigmas,
            switch=self.switch,
            separate=request.refiner_swap_method == "separate",
            seed=seed,
            callback=callback,
            base_patch=patch,
            wrap=lambda model: self._blended(model, seed),
            noise=noise,
        )

    def _blended(self, model: Denoiser, seed: int) -> Denoiser:
        return model if self.inpaint is None else self.inpaint.blended(model, seed)

    def _initial_latent(self, seed: int, first_sigma: float, sigma_max: float) -> torch.Tensor:
        """Seeded CPU float32 noise [1, 4, H/8, W/8] scaled to the first sigma (§2.2)."""
        height, width = self.request.height // LATENT_SCALE, self.request.width // LATENT_SCALE
        noise = initial_noise(seed, (1, LATENT_CHANNELS, height, width))
        return scale_initial_noise(noise, first_sigma, sigma_max, self.init_latent)

    def _step_progress(self) -> int:
        fraction = min(self.done_steps / max(self.total_steps, 1), 1.0)
        return PREPARED_PROGRESS + int((LAST_PROGRESS - PREPARED_PROGRESS) * fraction)

    def _preview(self, denoised: torch.Tensor) -> Image.Image:
        """The step preview; its colour map is SDXL's, so other latent formats are converted."""
        fmt = self.latent_format
        return latent_preview(denoised if fmt is None else fmt.to_sdxl(denoised))

    def _step_callback(self, index: int, count: int, steps: int, batch: int = 1) -> StepCallback:
        pending = _AsyncPreview()
        images = f"image {index + 1}" if batch == 1 else f"images {index + 1}-{index + batch}"

        def on_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            # dpm_adaptive and restart take more steps than asked; progress stops at the image.
            shown = min(step + 1, steps)
            self.done_steps = index * steps + shown * batch
            preview = None
            if not self.request.disable_preview:
                # On a GPU the step's x0 is copied to the host without waiting; the preview of
                # an earlier step goes out once its copy has landed, so the loop never syncs.
                latent = pending.swap(denoised[:1])  # the batch's first image
                preview = None if latent is None else self._preview(latent)
            message = f"Sampling step {shown}/{steps}, {images}/{count} ..."
            self.report(self._step_progress(), message, preview)
            action = self.poll()
            if action == "stop":
                raise TaskStopped("stopped by the caller")
            if action == "skip":
                raise _SkipImage()

        return on_step
