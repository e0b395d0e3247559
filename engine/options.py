"""The allowed values of every enumerated request field, with Fooocus's exact names and defaults.

The one registry of option names: the API's choices, ``GET /v1/engines/*`` lists, the request
check and the engine's own tables (sampler specs, schedules, upscale/vary rules) all read or are
pinned to what is written here. Plain Python, so web processes read it without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.types import EngineInputError

SAMPLERS: tuple[str, ...] = (
    "euler",
    "euler_ancestral",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "tcd",
    "restart",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS: tuple[str, ...] = (
    "normal",
    "karras",
    "exponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "lcm",
    "turbo",
    "align_your_steps",
    "tcd",
    "edm_playground_v2.5",
)
PLAYGROUND_SCHEDULER = "edm_playground_v2.5"
"""Fooocus's EDM model sampling for Playground v2.5 (Karras sigmas on EDM's continuous range)."""
TURBO_MAX_STEPS = 10
"""The turbo scheduler has this many timesteps; more steps cannot be asked of it."""
DISCRETE_TIME_SAMPLERS = frozenset({"tcd", "lcm"})
"""Samplers that step on the 1000 training timesteps of a discrete-time (eps) model."""


@dataclass(frozen=True)
class Performance:
    """A performance: its step counts and, for the distilled ones, the LoRA and forced values."""

    name: str
    steps: int
    steps_uov: int
    lora_file: str | None = None
    lora_weight: float = 1.0
    sampler: str | None = None
    scheduler: str | None = None

    @property
    def restricted(self) -> bool:
        """True for the LoRA performances: guidance 1, sharpness 0, ADM 1/1/0, no refiner."""
        return self.lora_file is not None


PERFORMANCES: dict[str, Performance] = {
    p.name: p
    for p in (
        Performance("Quality", 60, 36),
        Performance("Speed", 30, 18),
        Performance("Extreme Speed", 8, 8, "sdxl_lcm_lora.safetensors", 1.0, "lcm", "lcm"),
        Performance(
            "Lightning", 4, 4, "sdxl_lightning_4step_lora.safetensors", 1.0, "euler", "sgm_uniform"
        ),
        Performance(
            "Hyper-SD", 4, 4, "sdxl_hyper_sd_4step_lora.safetensors", 0.8, "dpmpp_sde_gpu", "karras"
        ),
    )
}

VARY_STRENGTHS: dict[str, float] = {"Vary (Subtle)": 0.5, "Vary (Strong)": 0.85}
"""The Vary methods and their denoising strength."""
UPSCALE_FACTORS: dict[str, float] = {
    "Upscale (1.5x)": 1.5,
    "Upscale (2x)": 2.0,
    "Upscale (Fast 2x)": 2.0,
}
"""The fixed-factor Upscale methods."""
FAST_UPSCALE = "Upscale (Fast 2x)"
CUSTOM_UPSCALE = "Upscale (Custom)"
"""Upscale by ``upscale_multiple`` (within MIN_UPSCALE..MAX_UPSCALE)."""
MIN_UPSCALE, MAX_UPSCALE = 1.0, 5.0
UOV_METHODS: tuple[str, ...] = ("Disabled", *VARY_STRENGTHS, *UPSCALE_FACTORS, CUSTOM_UPSCALE)
OUTPAINT_DIRECTIONS: tuple[str, ...] = ("Left", "Right", "Top", "Bottom")

# Per-type default (stop, weight) of an image-prompt slot.
CN_TYPE_DEFAULTS: dict[str, tuple[float, float]] = {
    "ImagePrompt": (0.5, 0.6),
    "FaceSwap": (0.9, 0.75),
    "PyraCanny": (0.5, 1.0),
    "CPDS": (0.5, 1.0),
}
CN_TYPES: tuple[str, ...] = tuple(CN_TYPE_DEFAULTS)

OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")
INPAINT_ENGINES: tuple[str, ...] = ("None", "v1", "v2.5", "v2.6")
REFINER_SWAP_METHODS: tuple[str, ...] = ("joint", "separate", "vae")
METADATA_SCHEMES: tuple[str, ...] = ("fooocus", "a1111")
DEFAULT_VAE = "Default (model)"
DEFAULT_STYLES: tuple[str, ...] = ("Fooocus V2", "Fooocus Enhance", "Fooocus Sharp")
"""Fooocus's style selection when none is given (the API's default)."""
NO_MODEL = "None"
MAX_LORAS = 5

SDXL_ASPECT_RATIOS: tuple[str, ...] = (
    "704*1408",
    "704*1344",
    "768*1344",
    "768*1280",
    "832*1216",
    "832*1152",
    "896*1152",
    "896*1088",
    "960*1088",
    "960*1024",
    "1024*1024",
    "1024*960",
    "1088*960",
    "1088*896",
    "1152*896",
    "1152*832",
    "1216*832",
    "1280*768",
    "1344*768",
    "1344*704",
    "1408*704",
    "1472*704",
    "1536*640",
    "1600*640",
    "1664*576",
    "1728*576",
)


def is_vary(method: str) -> bool:
    """True for the two Vary methods."""
    return method in VARY_STRENGTHS


def is_upscale(method: str) -> bool:
    """True for every Upscale method (Custom included)."""
    return method in UPSCALE_FACTORS or method == CUSTOM_UPSCALE


def check_sampler(name: str) -> None:
    """Raise the typed error for a sampler name that is not in :data:`SAMPLERS`."""
    if name not in SAMPLERS:
        raise EngineInputError("sampler_name", f"unknown sampler '{name}'")


def check_scheduler(scheduler_name: str, steps: int | None = None) -> None:
    """Raise the typed error for a scheduler this engine cannot run (with ``steps`` if known)."""
    if scheduler_name not in SCHEDULERS:
        raise EngineInputError("scheduler_name", f"unknown scheduler '{scheduler_name}'")
    if scheduler_name == "turbo" and steps is not None and steps > TURBO_MAX_STEPS:
        raise EngineInputError(
            "scheduler_name",
            f"scheduler 'turbo' has {TURBO_MAX_STEPS} timesteps; {steps} steps were asked for",
        )
