"""The engine: one request in, images out (text-to-image with Fooocus's sampling and guidance).

:class:`Engine` checks a request before loading anything, resolves the performance preset and
hands the work to :mod:`engine.run`: load the model (and refiner) through the model manager, then
for each image build the prompt elements (wildcards, arrays, styles, Fooocus V2 expansion),
encode them, sample from seeded noise with the Fooocus denoiser, decode with the VAE, run the
NSFW check when asked and report the image with its metadata. Progress, previews and stop/skip go
through the caller's callbacks; the engine never learns who listens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from engine.components import SDXLComponents
from engine.config import EngineConfig
from engine.expansion import EXPANSION_FILES, EXPANSION_FOLDER, PromptExpansion
from engine.metadata import FileHasher
from engine.options import DEFAULT_VAE, METADATA_SCHEMES, NO_MODEL, PERFORMANCES
from engine.plan import Plan, plan_request
from engine.prompt_syntax import Wildcards
from engine.run import RequestRun
from engine.safety import SAFETY_FILE, SAFETY_FOLDER, SafetyFilter
from engine.sampling import check_scheduler, get_sampler
from engine.styles import FOOOCUS_V2, StyleLibrary
from engine.types import (
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    FeatureNotSupportedError,
    StopPoll,
)

LATENT_SCALE = 8
Message = Callable[[str], None]


class ModelSource(Protocol):
    """What the engine needs from the model manager (:class:`engine.models.ModelManager`)."""

    def require(self, folder: str, filename: str, on_message: Message | None = None) -> Path: ...

    def list_files(self, folder: str) -> list[str]: ...

    def load_base(
        self,
        name: str,
        *,
        vae_name: str = DEFAULT_VAE,
        loras: Sequence[tuple[str, float]] = (),
        on_message: Message | None = None,
    ) -> SDXLComponents: ...

    def load_refiner(
        self,
        name: str,
        *,
        loras: Sequence[tuple[str, float]] = (),
        on_message: Message | None = None,
    ) -> SDXLComponents: ...


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
        self.wildcards = Wildcards(config.wildcards_path)
        self.hasher = FileHasher()
        self._expansion: PromptExpansion | None = None
        self._safety: SafetyFilter | None = None

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
        self.style_library.check(request.style_selections)
        self._check_unsupported(request, plan)
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
            (
                "embedding:" in request.prompt,
                "prompt",
                "textual-inversion embeddings ('embedding:name') are not supported yet",
            ),
            (
                "embedding:" in request.negative_prompt,
                "negative_prompt",
                "textual-inversion embeddings ('embedding:name') are not supported yet",
            ),
        )
        for refused, field, message in refusals:
            if refused:
                error = FeatureNotSupportedError if "unknown" not in message else EngineInputError
                raise error(field, message)

    def _check_file(self, folder: str, name: str, field: str, *, listed: bool = True) -> None:
        """Available: downloadable, or in the folder's listing (``listed``) or on disk."""
        if f"{folder}/{name}" in self.config.downloads:
            return
        if listed and name in self.manager.list_files(folder):
            return
        if not listed and (self.config.models_dir / folder / name).is_file():
            return
        raise EngineInputError(field, f"{folder} file '{name}' is not available")

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
        return RequestRun(self, request, on_event, should_stop).execute()
