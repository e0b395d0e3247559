"""The check before anything loads: can this engine run this request with the files it has?

Plain Python (no torch, diffusers or transformers): :class:`engine.Engine` runs it first thing in
``generate``, and web processes run the same check to refuse a request with a 422 before it is
queued. It reads option names (:mod:`engine.options`), the styles folder, and model folders by
listing them; it never opens a weight file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from engine.config import (
    EXPANSION_FILES,
    EXPANSION_FOLDER,
    INPAINT_FOLDER,
    INPAINT_HEAD_FILE,
    INPAINT_PATCH_FILES,
    SAFETY_FILE,
    SAFETY_FOLDER,
    UPSCALER_FILE,
    UPSCALER_FOLDER,
    EngineConfig,
    list_model_files,
)
from engine.masks import prepare_mask
from engine.options import (
    CUSTOM_UPSCALE,
    DEFAULT_VAE,
    DISCRETE_TIME_SAMPLERS,
    INPAINT_ENGINES,
    MAX_UPSCALE,
    METADATA_SCHEMES,
    MIN_UPSCALE,
    NO_MODEL,
    OUTPAINT_DIRECTIONS,
    PERFORMANCES,
    PLAYGROUND_SCHEDULER,
    REFINER_SWAP_METHODS,
    UOV_METHODS,
    check_sampler,
    check_scheduler,
    is_upscale,
)
from engine.plan import IMAGE_PROMPT_FIELD, Plan, plan_request, required_files, resolve_slots
from engine.prompts.styles import FOOOCUS_V2, StyleLibrary
from engine.tools.checks import check_enhance
from engine.types import EngineInputError, EngineRequest, FeatureNotSupportedError

LATENT_SCALE = 8
UNSUPPORTED_REFINER_SWAPS = frozenset({"vae"})
"""Refiner swap methods Fooocus has that this engine refuses with a named error."""

ListFiles = Callable[[str], list[str]]


class RequestChecker:
    """Checks requests against one engine configuration.

    ``list_files(folder)`` lists a model folder (default: the folder on disk, as the model
    manager lists it); ``styles`` is the style library (default: read from ``styles_dir``).
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        list_files: ListFiles | None = None,
        styles: StyleLibrary | None = None,
    ) -> None:
        self.config = config
        self.list_files: ListFiles = list_files or partial(list_model_files, config.models_dir)
        self.styles = styles or StyleLibrary.from_folder(config.styles_dir)

    def plan(self, request: EngineRequest) -> Plan:
        """``request`` resolved against its performance and the LoRA files on disk."""
        return plan_request(request, self.list_files("loras"))

    def check(self, request: EngineRequest) -> Plan:
        """Raise EngineInputError / FeatureNotSupportedError for anything this engine cannot do;
        return the request's plan. Each error names the request field at fault."""
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
        check_sampler(plan.sampler)
        check_scheduler(plan.scheduler, plan.steps)
        if plan.scheduler == PLAYGROUND_SCHEDULER and plan.sampler in DISCRETE_TIME_SAMPLERS:
            # These samplers step on the 1000 training timesteps of an eps model; EDM's
            # continuous sigmas have no such grid, so the result would be noise.
            raise EngineInputError(
                "sampler_name",
                f"sampler '{plan.sampler}' needs a discrete-time model; "
                f"it cannot run with the {PLAYGROUND_SCHEDULER} scheduler",
            )
        self.styles.check(request.style_selections)
        if request.enhance is not None:
            check_enhance(request.enhance)
        self._check_refiner_swap(request, plan)
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
        return plan

    @staticmethod
    def _check_refiner_swap(request: EngineRequest, plan: Plan) -> None:
        method = request.refiner_swap_method
        if method not in REFINER_SWAP_METHODS:
            raise EngineInputError("refiner_swap_method", f"unknown refiner swap method '{method}'")
        if plan.refiner != NO_MODEL and method in UNSUPPORTED_REFINER_SWAPS:
            supported = [m for m in REFINER_SWAP_METHODS if m not in UNSUPPORTED_REFINER_SWAPS]
            raise FeatureNotSupportedError(
                "refiner_swap_method",
                f"the '{method}' refiner swap is not supported; use "
                + " or ".join(f"'{m}'" for m in supported),
            )

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
        if listed and name in self.list_files(folder):
            return
        if not listed and (self.config.models_dir / folder / name).is_file():
            return
        raise EngineInputError(field, f"{folder} file '{name}' is not available")
