"""The engine's public data types: what goes in, what comes out, what it reports.

The engine is a plain library. Callers build a frozen :class:`EngineRequest`, call
:meth:`engine.Engine.generate`, receive :class:`EngineEvent` objects through a callback while it
works, and get an :class:`EngineResult` back. Nothing here knows about HTTP, databases or Channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from engine.tools.types import EnhanceSpec

StopAction = Literal["stop", "skip"]
"""What a caller may ask between sampling steps: end the whole request, or end the current image."""

EventKind = Literal["progress", "image"]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class EngineInputError(EngineError):
    """The request asks for something impossible; raised before any model loads.

    ``field`` names the request field at fault, so an API layer can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class FeatureNotSupportedError(EngineInputError):
    """The request needs a feature this engine does not implement yet (a clear, named refusal)."""


class ModelFileMissingError(EngineError):
    """A model file the request needs is absent and could not be downloaded."""

    def __init__(self, filename: str, folder: str, message: str) -> None:
        super().__init__(message)
        self.filename = filename
        self.folder = folder


class TaskStopped(EngineError):
    """Raised inside the engine on a stop request; ``Engine.generate`` turns it into a result."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA slot: a file in ``models/loras`` and its weight (-2..2)."""

    model_name: str
    weight: float = 0.5
    enabled: bool = True


@dataclass(frozen=True)
class ImagePromptSpec:
    """One image-prompt slot (``controlnet_image``); None stop/weight = the type's default."""

    image: Image.Image
    cn_type: str = "ImagePrompt"
    stop: float | None = None
    weight: float | None = None


@dataclass(frozen=True)
class EngineRequest:
    """Everything one generation needs, already validated for types and ranges by the caller.

    Field names follow FooocusAPI. ``seed`` is always resolved (never -1): the caller decides a
    random seed so that it can record it before the task runs. ``width``/``height`` are the final
    generation size (aspect ratio and overwrite_width/height already applied by the caller).
    """

    base_model_name: str
    prompt: str = ""
    negative_prompt: str = ""
    style_selections: tuple[str, ...] = ()
    performance_selection: str = "Speed"
    width: int = 1152
    height: int = 896
    image_number: int = 1
    seed: int = 0
    sharpness: float = 2.0
    guidance_scale: float = 4.0
    refiner_model_name: str = "None"
    refiner_switch: float = 0.5
    loras: tuple[LoraSpec, ...] = ()
    performance_lora_name: str | None = None
    """Replaces the performance's standard LoRA file (e.g. the demo model set's stand-ins)."""
    sampler_name: str = "dpmpp_2m_sde_gpu"
    scheduler_name: str = "karras"
    vae_name: str = "Default (model)"
    adm_scaler_positive: float = 1.5
    adm_scaler_negative: float = 0.8
    adm_scaler_end: float = 0.3
    adaptive_cfg: float = 7.0
    clip_skip: int = 2
    overwrite_step: int = -1
    overwrite_switch: float = -1
    refiner_swap_method: str = "joint"
    freeu_enabled: bool = False
    freeu_b1: float = 1.01
    freeu_b2: float = 1.02
    freeu_s1: float = 0.99
    freeu_s2: float = 0.95
    disable_preview: bool = False
    disable_seed_increment: bool = False
    black_out_nsfw: bool = False
    read_wildcards_in_order: bool = False
    metadata_scheme: str = "fooocus"
    # Image inputs (upscale/vary, inpaint/outpaint, image prompts).
    uov_method: str = "Disabled"
    uov_input_image: Image.Image | None = None
    upscale_multiple: float = 1.0
    overwrite_vary_strength: float = -1
    overwrite_upscale_strength: float = -1
    inpaint_input_image: Image.Image | None = None
    inpaint_mask_image: Image.Image | None = None
    inpaint_additional_prompt: str = ""
    outpaint_selections: tuple[str, ...] = ()
    outpaint_distance: tuple[int, int, int, int] = (0, 0, 0, 0)
    inpaint_engine: str = "v2.6"
    inpaint_strength: float = 1.0
    inpaint_respective_field: float = 0.618
    inpaint_disable_initial_latent: bool = False
    invert_mask_checkbox: bool = False
    inpaint_erode_or_dilate: int = 0
    debugging_inpaint_preprocessor: bool = False
    image_prompts: tuple[ImagePromptSpec, ...] = ()
    debugging_cn_preprocessor: bool = False
    skipping_cn_preprocessor: bool = False
    canny_low_threshold: int = 64
    canny_high_threshold: int = 128
    controlnet_softness: float = 0.25
    enhance: EnhanceSpec | None = None
    """Enhance after generation (or on its own input image); None = off."""


@dataclass(frozen=True)
class GeneratedImage:
    """One finished image with the seed that made it and its metadata (Fooocus's log rows)."""

    index: int
    image: Image.Image
    seed: int
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineEvent:
    """A report from the engine while it works.

    ``kind == "progress"``: ``progress`` (0..100) and ``message`` (e.g. ``"Sampling step 3/30, image
    1/2 ..."``), with ``preview`` (a small RGB image of the current x0 estimate) during sampling
    unless previews are disabled. ``kind == "image"``: ``image`` is a finished image, reported
    as soon as it exists so the caller can save it before the rest of the request is done.
    """

    kind: EventKind
    progress: int
    message: str
    preview: Image.Image | None = None
    image: GeneratedImage | None = None


@dataclass(frozen=True)
class EngineResult:
    """What a request produced. ``stopped`` is True when the caller asked to stop part-way."""

    images: tuple[GeneratedImage, ...]
    stopped: bool = False


EventCallback = Callable[[EngineEvent], None]
StopPoll = Callable[[], StopAction | None]
"""Polled between sampling steps. Returning "skip" ends the current image (it is not returned) and
the request goes on with the next; the caller returns "skip" once per skip request."""
