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
from engine.check import RequestChecker
from engine.config import (
    EXPANSION_FILES,
    EXPANSION_FOLDER,
    SAFETY_FILE,
    SAFETY_FOLDER,
    UPSCALER_FILE,
    UPSCALER_FOLDER,
    EngineConfig,
)
from engine.image_prompts.slots import ImagePromptModels
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
from engine.output.metadata import FileHasher
from engine.output.safety import SafetyFilter
from engine.plan import Plan
from engine.prompts.embeddings import EMBEDDINGS_FOLDER, EmbeddingLibrary
from engine.prompts.expansion import PromptExpansion
from engine.prompts.styles import StyleLibrary
from engine.prompts.syntax import Wildcards
from engine.run import RequestRun, RunResources
from engine.tools.models import ToolModels
from engine.tools.types import DescribeRequest, MaskRequest, MaskResult
from engine.types import (
    EngineError,
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    StopPoll,
)
from engine.uov.upscaler import Upscaler, UpscalerFormatError


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
        self.style_library = StyleLibrary.from_config(config)
        self.checker = RequestChecker(
            config, list_files=self.manager.list_files, styles=self.style_library
        )
        self.wildcards = Wildcards(config.wildcards_path)
        self.hasher = FileHasher()
        self._expansion: PromptExpansion | None = None
        self._safety: SafetyFilter | None = None
        self._upscaler: Upscaler | None = None
        self._image_prompt_models: ImagePromptModels | None = None
        self._image_prompt_message: Message | None = None
        self.tools = ToolModels(self.manager, self.device, self.dtype)

    def styles(self) -> list[str]:
        """Every selectable style name (with the 'Fooocus V2' and 'Random Style' pseudo-styles)."""
        return self.style_library.names()

    def plan(self, request: EngineRequest) -> Plan:
        """``request`` resolved against its performance and the LoRA files on disk."""
        return self.checker.plan(request)

    def check(self, request: EngineRequest) -> None:
        """Raise EngineInputError / FeatureNotSupportedError for anything this engine cannot do.

        Runs before any model loads (:mod:`engine.check`); each error names the request field.
        """
        self.checker.check(request)

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
        if request.enhance is not None:
            from engine.tools.enhance import EnhanceRun

            def run_one(sub: EngineRequest, events: EventCallback, stop: StopPoll) -> EngineResult:
                return RequestRun(self.resources(), sub, events, stop).execute()

            enhance = EnhanceRun(request, self.tools, run_one, on_event, should_stop)
            return self._guarded(lambda: [enhance.execute()])[0]
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
            key = None if item.request.enhance is not None else batch_key(run)
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

    def batch_key(self, request: EngineRequest) -> Hashable | None:
        """What ``request`` must share with others for :meth:`generate_many` to sample them as
        one batch; None when it runs alone (image inputs, enhance, a request that fails its
        check, a sampler that cannot batch). Loads nothing."""
        if request.enhance is not None:
            return None
        try:
            self.check(request)
        except EngineError:
            return None
        return batch_key(RequestRun(self.resources(), request, None, None))

    def _run_group(self, chosen: list[BatchItem]) -> list[EngineResult]:
        if len(chosen) > 1:
            return self._guarded(lambda: run_together(self.resources(), chosen))
        item = chosen[0]  # alone: exactly what generate() does (enhance included)
        return [self.generate(item.request, item.on_event, item.should_stop)]

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
        self.tools = ToolModels(self.manager, self.device, self.dtype)
        self.placer.clear()

    def describe(self, request: DescribeRequest, on_message: Message | None = None) -> str:
        """Describe-image: a BLIP caption (``Photo``) or WD14 tags (``Anime``)."""
        return self.tools.describe(request, on_message)

    def generate_mask(self, request: MaskRequest, on_message: Message | None = None) -> MaskResult:
        """generate_mask: a background-removal model's mask, or GroundingDINO + SAM's."""
        return self.tools.mask(request, on_message)

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
