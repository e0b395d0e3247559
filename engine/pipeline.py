"""The engine: one request in, images out (text-to-image with Fooocus's sampling and guidance).

:class:`Engine` checks a request before loading anything, resolves the performance preset and
hands the work to :mod:`engine.run`: load the model (and refiner) through the model manager, then
for each image build the prompt elements (wildcards, arrays, styles, Fooocus V2 expansion),
encode them, sample from seeded noise with the Fooocus denoiser, decode with the VAE, run the
NSFW check when asked and report the image with its metadata. Progress, previews and stop/skip go
through the caller's callbacks; the engine never learns who listens.
"""

from __future__ import annotations

import torch

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
        self.device = pick_device(config.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if manager is None:
            from engine.models.manager import ModelManager

            manager = ModelManager(config, self.device, self.dtype)
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
        return self._expansion

    def safety_filter(self, on_message: Message | None = None) -> SafetyFilter:
        """The NSFW checker, downloaded when missing and loaded once."""
        if self._safety is None:
            path = self.manager.require(SAFETY_FOLDER, SAFETY_FILE, on_message)
            try:
                self._safety = SafetyFilter(path, self.device, self.dtype)
            except ValueError as exc:
                raise EngineInputError("black_out_nsfw", str(exc)) from exc
        return self._safety

    def upscaler(self, on_message: Message | None = None) -> Upscaler:
        """The ESRGAN super-resolution model, downloaded when missing and loaded once."""
        if self._upscaler is None:
            path = self.manager.require(UPSCALER_FOLDER, UPSCALER_FILE, on_message)
            try:
                self._upscaler = Upscaler(path, self.device)
            except UpscalerFormatError as exc:
                raise EngineInputError("uov_method", str(exc)) from exc
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

            def run(sub: EngineRequest, events: EventCallback, stop: StopPoll) -> EngineResult:
                return RequestRun(self.resources(), sub, events, stop).execute()

            return EnhanceRun(request, self.tools, run, on_event, should_stop).execute()
        return RequestRun(self.resources(), request, on_event, should_stop).execute()

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
            hasher=self.hasher,
            style_library=self.style_library,
            wildcards=self.wildcards,
            embedding_library=self.embedding_library,
            expansion_model=self.expansion_model,
            image_prompt_models=self.image_prompt_models,
            upscaler=self.upscaler,
            safety_filter=self.safety_filter,
        )
