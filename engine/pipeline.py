"""The engine: one request in, images out (text-to-image with Fooocus's sampling and guidance).

:class:`Engine` checks a request before loading anything, resolves the performance preset and
hands the work to :mod:`engine.run`: load the model (and refiner) through the model manager, then
for each image build the prompt elements (wildcards, arrays, styles, Fooocus V2 expansion),
encode them, sample from seeded noise with the Fooocus denoiser, decode with the VAE, run the
NSFW check when asked and report the image with its metadata. Progress, previews and stop/skip go
through the caller's callbacks; the engine never learns who listens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from engine.batch import BatchItem, batch_key, run_together
from engine.config import EngineConfig
from engine.image_prompts.slots import FIELD as IMAGE_PROMPT_FIELD
from engine.image_prompts.slots import ImagePromptModels, required_files, resolve_slots
from engine.inpaint.mask import prepare_mask
from engine.inpaint.patch import INPAINT_FOLDER, INPAINT_HEAD_FILE, INPAINT_PATCH_FILES
from engine.memory import (
    DevicePlacer,
    OutOfMemoryError,
    env_level,
    free_device_memory,
    is_out_of_memory,
    modules_in,
    release_memory,
)
from engine.models.source import Message, ModelSource
from engine.options import (
    DEFAULT_VAE,
    INPAINT_ENGINES,
    METADATA_SCHEMES,
    NO_MODEL,
    OUTPAINT_DIRECTIONS,
    PERFORMANCES,
    UOV_METHODS,
)
from engine.output.metadata import FileHasher
from engine.output.safety import SAFETY_FILE, SAFETY_FOLDER, SafetyFilter
from engine.plan import Plan, plan_request
from engine.prompts.embeddings import EMBEDDINGS_FOLDER, EmbeddingLibrary
from engine.prompts.expansion import EXPANSION_FILES, EXPANSION_FOLDER, PromptExpansion
from engine.prompts.styles import FOOOCUS_V2, StyleLibrary
from engine.prompts.syntax import Wildcards
from engine.run import RequestRun, RunResources
from engine.sampling import check_scheduler, get_sampler
from engine.types import (
    EngineError,
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    FeatureNotSupportedError,
    StopPoll,
)
from engine.uov.rules import CUSTOM_UPSCALE, MAX_UPSCALE, MIN_UPSCALE, is_upscale
from engine.uov.upscaler import UPSCALER_FILE, UPSCALER_FOLDER, Upscaler, UpscalerFormatError

LATENT_SCALE = 8


# Samplers that step on the 1000 training timesteps of a discrete-time (eps) model.
DISCRETE_TIME_SAMPLERS = frozenset({"tcd", "lcm"})


def pick_device(setting: str) -> torch.device:
    """CUDA when ``setting`` is "auto" and a GPU is present, else the named device (or CPU)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Engine:
    """Runs generation requests; keeps models (through the manager) and styles between them."""

    def __init__(self, config: EngineConfig, *, manager: ModelSource | None = None) -> None:
        self.config = config
        requested = config.vram or env_level()
        # "none" keeps every model in system memory and computes on the CPU.
        self.device = pick_device("cpu" if requested == "none" else config.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        budget = config.vram_budget
        if budget is None:
            budget = free_device_memory(self.device)  # measured once, at start (Fooocus too)
        self.placer = DevicePlacer(self.device, requested, budget)
        if manager is None:
            from engine.models.manager import ModelManager

            manager = ModelManager(config, self.device, self.dtype, self.placer)
        self.manager: ModelSource = manager
        self.style_library = StyleLibrary.from_folder(config.styles_dir)
        self.wildcards = Wildcards(config.wildcards_path)
        self.hasher = FileHasher()
        self._expansion: PromptExpansion | None = None
        self._safety: SafetyFilter | None = None
        self._upscaler: Upscaler | None = None
        self._image_prompt_models: ImagePromptModels | None = None
        self._image_prompt_message: Message | None = None

    def styles(self) -> list[str]:
        """Every selectable style name (with the 'Fooocus V2' and 'Random Style' pseudo-styles)."""
        return self.style_library.names()

    def plan(self, request: EngineRequest) -> Plan:
        """``request`` resolved against its performance and the LoRA files on disk."""
        return plan_request(request, self.manager.list_files("loras"))

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
        plan = self.plan(request)
        get_sampler(plan.sampler)
        check_scheduler(plan.scheduler, plan.steps)
        if plan.scheduler == "edm_playground_v2.5" and plan.sampler in DISCRETE_TIME_SAMPLERS:
            # These samplers step on the 1000 training timesteps of an eps model; EDM's
            # continuous sigmas have no such grid, so the result would be noise.
            raise EngineInputError(
                "sampler_name",
                f"sampler '{plan.sampler}' needs a discrete-time model; "
                "it cannot run with the edm_playground_v2.5 scheduler",
            )
        self.style_library.check(request.style_selections)
        self._check_unsupported(request, plan)
        self._check_image_inputs(request)
        self._check_inpaint(request)
        self._check_image_prompts(request)
        self._check_file("checkpoints", request.base_model_name, "base_model_name")
        if plan.refiner != NO_MODEL:
            self._check_file("checkpoints", plan.refiner, "refiner_model_name")
        if request.vae_name not in (DEFAULT_VAE, NO_MODEL):
            self._check_file("vae", request.vae_name, "vae_name")
        user_loras = len(plan.loras) - (
            1 if PERFORMANCES[request.performance_selection].restricted else 0
        )
        for k, (name, _) in enumerate(plan.loras):
            self._check_file("loras", name, "loras" if k < user_loras else "performance_selection")
        if FOOOCUS_V2 in request.style_selections and plan.lines.main:
            for name in EXPANSION_FILES:
                self._check_file(EXPANSION_FOLDER, name, "style_selections", listed=False)
        if request.black_out_nsfw:
            self._check_file(SAFETY_FOLDER, SAFETY_FILE, "black_out_nsfw", listed=False)

    def _check_unsupported(self, request: EngineRequest, plan: Plan) -> None:
        refusals = (
            (
                plan.refiner != NO_MODEL and request.refiner_swap_method == "vae",
                "refiner_swap_method",
                "the 'vae' refiner swap is not supported; use 'joint' or 'separate'",
            ),
            (
                request.refiner_swap_method not in ("joint", "separate", "vae"),
                "refiner_swap_method",
                f"unknown refiner swap method '{request.refiner_swap_method}'",
            ),
        )
        for refused, field, message in refusals:
            if refused:
                error = FeatureNotSupportedError if "unknown" not in message else EngineInputError
                raise error(field, message)

    def _check_image_inputs(self, request: EngineRequest) -> None:
        """The image-input fields: known methods, images present and non-empty, files there."""
        if request.uov_method not in UOV_METHODS:
            raise EngineInputError("uov_method", f"unknown uov_method '{request.uov_method}'")
        if request.uov_method != "Disabled" and request.inpaint_input_image is None:
            image = request.uov_input_image
            if image is None:
                raise EngineInputError(
                    "uov_input_image", f"uov_method '{request.uov_method}' needs an input image"
                )
            if image.width < 1 or image.height < 1:
                raise EngineInputError("uov_input_image", "the input image is empty")
            if request.uov_method == CUSTOM_UPSCALE and not (
                MIN_UPSCALE <= request.upscale_multiple <= MAX_UPSCALE
            ):
                raise EngineInputError(
                    "upscale_multiple",
                    f"upscale_multiple must be within {MIN_UPSCALE:g}..{MAX_UPSCALE:g}",
                )
            if is_upscale(request.uov_method):
                self._check_file(UPSCALER_FOLDER, UPSCALER_FILE, "uov_method", listed=False)

    def _check_inpaint(self, request: EngineRequest) -> None:
        """Inpaint/outpaint fields: a usable image and mask, known engine and directions."""
        if request.inpaint_input_image is None:
            if request.outpaint_selections:
                raise EngineInputError("inpaint_input_image", "outpaint needs an input image")
            return
        image = request.inpaint_input_image
        if image.width < 1 or image.height < 1:
            raise EngineInputError("inpaint_input_image", "the input image is empty")
        if request.inpaint_engine not in INPAINT_ENGINES:
            raise EngineInputError(
                "inpaint_engine", f"unknown inpaint engine '{request.inpaint_engine}'"
            )
        known = {d.lower() for d in OUTPAINT_DIRECTIONS}
        for direction in request.outpaint_selections:
            if direction.lower() not in known:
                raise EngineInputError(
                    "outpaint_selections", f"unknown outpaint direction '{direction}'"
                )
        if not request.outpaint_selections:
            mask = prepare_mask(request, image.size)
            if not (mask > 127).any():
                raise EngineInputError(
                    "inpaint_mask_image", "the mask has no white pixels and no outpaint is asked"
                )
        if request.inpaint_engine != NO_MODEL:
            self._check_file(INPAINT_FOLDER, INPAINT_HEAD_FILE, "inpaint_engine", listed=False)
            name = INPAINT_PATCH_FILES[request.inpaint_engine]
            self._check_file(INPAINT_FOLDER, name, "inpaint_engine", listed=False)

    def _check_image_prompts(self, request: EngineRequest) -> None:
        """Image-prompt slots: known types, non-empty images, their model files available."""
        for slot in resolve_slots(request):
            if slot.image.width < 1 or slot.image.height < 1:
                raise EngineInputError(IMAGE_PROMPT_FIELD, f"the {slot.cn_type} image is empty")
        if request.debugging_cn_preprocessor:
            return  # the maps need no model
        for folder, name in required_files(request):
            self._check_file(folder, name, IMAGE_PROMPT_FIELD, listed=False)

    def _check_file(self, folder: str, name: str, field: str, *, listed: bool = True) -> None:
        """Available: downloadable, or in the folder's listing (``listed``) or on disk."""
        if f"{folder}/{name}" in self.config.downloads:
            return
        if listed and name in self.manager.list_files(folder):
            return
        if not listed and (self.config.models_dir / folder / name).is_file():
            return
        raise EngineInputError(field, f"{folder} file '{name}' is not available")

    def embedding_library(self) -> EmbeddingLibrary:
        """The textual-inversion files in ``models/embeddings`` as they are now (read lazily)."""
        manager = self.manager
        return EmbeddingLibrary(
            manager.list_files(EMBEDDINGS_FOLDER),
            lambda name: manager.require(EMBEDDINGS_FOLDER, name),
            "prompt",
        )

    def expansion_model(self, on_message: Message | None = None) -> PromptExpansion:
        """The Fooocus V2 model, downloaded when missing and loaded once."""
        if self._expansion is None:
            paths = [self.manager.require(EXPANSION_FOLDER, n, on_message) for n in EXPANSION_FILES]
            self._expansion = PromptExpansion(paths[0].parent, self.device, self.dtype)
            self.placer.register("expansion", modules_in(self._expansion))
        return self._expansion

    def safety_filter(self, on_message: Message | None = None) -> SafetyFilter:
        """The NSFW checker, downloaded when missing and loaded once."""
        if self._safety is None:
            path = self.manager.require(SAFETY_FOLDER, SAFETY_FILE, on_message)
            try:
                self._safety = SafetyFilter(path, self.device, self.dtype)
            except ValueError as exc:
                raise EngineInputError("black_out_nsfw", str(exc)) from exc
            self.placer.register("safety", modules_in(self._safety))
        return self._safety

    def upscaler(self, on_message: Message | None = None) -> Upscaler:
        """The ESRGAN super-resolution model, downloaded when missing and loaded once."""
        if self._upscaler is None:
            path = self.manager.require(UPSCALER_FOLDER, UPSCALER_FILE, on_message)
            try:
                self._upscaler = Upscaler(path, self.device)
            except UpscalerFormatError as exc:
                raise EngineInputError("uov_method", str(exc)) from exc
            self.placer.register("upscaler", modules_in(self._upscaler))
        return self._upscaler

    def image_prompt_models(self, on_message: Message | None = None) -> ImagePromptModels:
        """The image-prompt models (CLIP vision, IP-Adapters), each loaded on first use."""
        self._image_prompt_message = on_message  # the current task's, for download messages
        if self._image_prompt_models is None:
            manager = self.manager
            self._image_prompt_models = ImagePromptModels(
                lambda folder, name: manager.require(folder, name, self._image_prompt_message),
                self.device,
                self.dtype,
            )
        return self._image_prompt_models

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
        run = RequestRun(self.resources(), request, on_event, should_stop)
        return self._guarded(lambda: [run.execute()])[0]

    def generate_many(self, items: Sequence[BatchItem]) -> list[EngineResult | EngineError]:
        """Generate several requests, sampling those that share a batch key together
        (:mod:`engine.batch`); each keeps its own events, stop/skip and result. A request that
        fails (a bad field, out of memory) gets its EngineError in its place; the others run."""
        results: list[EngineResult | EngineError | None] = [None] * len(items)
        groups: dict[Hashable, list[int]] = {}
        for k, item in enumerate(items):
            try:
                self.check(item.request)
            except EngineError as exc:
                results[k] = exc
                continue
            run = RequestRun(self.resources(), item.request, item.on_event, item.should_stop)
            key = batch_key(run)
            groups.setdefault(("alone", k) if key is None else key, []).append(k)
        for members in groups.values():
            chosen = [items[k] for k in members]
            try:
                outs: list[EngineResult | EngineError] = list(self._run_group(chosen))
            except EngineError as exc:
                outs = [exc] * len(members)
            for k, out in zip(members, outs, strict=True):
                results[k] = out
        return [r for r in results if r is not None]

    def _run_group(self, chosen: list[BatchItem]) -> list[EngineResult]:
        if len(chosen) > 1:
            return self._guarded(lambda: run_together(self.resources(), chosen))
        item = chosen[0]
        run = RequestRun(self.resources(), item.request, item.on_event, item.should_stop)
        return self._guarded(lambda: [run.execute()])

    def _guarded(self, work: Callable[[], list[EngineResult]]) -> list[EngineResult]:
        """``work()``; running out of device memory becomes OutOfMemoryError (naming the memory
        level and what to set) after the memory is released, so the next task can run."""
        try:
            return work()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            level = self.placer.plan.level if self.placer.plan else self.placer.requested
            failure = OutOfMemoryError(level, f"on {self.device} ({exc.__class__.__name__})")
        # Outside the except block the traceback (and the tensors its frames hold) is gone.
        self.placer.offload_all()
        release_memory()
        raise failure

    def warm_up(self, base_model_name: str, width: int = 0, height: int = 0) -> None:
        """Run one short generation so that loading (and with FOOOCUS_COMPILE, compiling the
        UNet for this size) happens before the first task; ``width``/``height`` default to the
        model's native size. Files that are missing are not downloaded for it."""
        components = self.manager.load_base(base_model_name)
        native = components.native_size
        request = EngineRequest(
            base_model_name=base_model_name,
            prompt="warm-up",
            width=width or native,
            height=height or native,
            overwrite_step=2,
            sampler_name="euler",
            disable_preview=True,
        )
        self.generate(request)

    def clean_vram(self) -> None:
        """Free every cached model (base, refiner, helper models) and the device cache.

        The next request loads what it needs again; settings and libraries stay.
        """
        clear = getattr(self.manager, "clear", None)
        if clear is not None:
            clear()
        self._expansion = self._safety = self._upscaler = None
        self._image_prompt_models = None
        self.placer.clear()

    def resources(self) -> RunResources:
        """What one request's run may use: the models, the prompt libraries and the lazily loaded
        helper models (loaded once, kept for later requests)."""
        return RunResources(
            models=self.manager,
            placer=self.placer,
            hasher=self.hasher,
            style_library=self.style_library,
            wildcards=self.wildcards,
            embedding_library=self.embedding_library,
            expansion_model=self.expansion_model,
            image_prompt_models=self.image_prompt_models,
            upscaler=self.upscaler,
            safety_filter=self.safety_filter,
            batch_images=(
                self.device.type == "cuda"
                if self.config.batch_images is None
                else self.config.batch_images
            ),
        )
