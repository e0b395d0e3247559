"""The allowed values of every enumerated request field, with Fooocus's exact names and defaults."""

from __future__ import annotations

from dataclasses import dataclass

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
DEFAULT_SAMPLER = "dpmpp_2m_sde_gpu"
DEFAULT_SCHEDULER = "karras"


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

UOV_METHODS: tuple[str, ...] = (
    "Disabled",
    "Vary (Subtle)",
    "Vary (Strong)",
    "Upscale (1.5x)",
    "Upscale (2x)",
    "Upscale (Fast 2x)",
    "Upscale (Custom)",
)
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
