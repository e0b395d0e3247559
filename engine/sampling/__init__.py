"""Noise schedules, sigma lists, seeded noise and k-diffusion-style samplers."""

from engine.sampling.common import Denoiser, StepCallback
from engine.sampling.noise import (
    BrownianNoise,
    GaussianNoise,
    NoiseSampler,
    image_seed,
    initial_noise,
    scale_initial_noise,
)
from engine.sampling.samplers import (
    SAMPLER_SPECS,
    SUPPORTED_SAMPLERS,
    SamplerSpec,
    get_sampler,
    make_noise,
    sample,
)
from engine.sampling.schedules import (
    PLAYGROUND_SCHEDULER,
    EdmNoiseSchedule,
    NoiseSchedule,
    build_sigmas,
    check_scheduler,
    schedule_for,
    training_sigmas,
)

__all__ = [
    "PLAYGROUND_SCHEDULER",
    "SAMPLER_SPECS",
    "SUPPORTED_SAMPLERS",
    "BrownianNoise",
    "Denoiser",
    "EdmNoiseSchedule",
    "GaussianNoise",
    "NoiseSampler",
    "NoiseSchedule",
    "SamplerSpec",
    "StepCallback",
    "build_sigmas",
    "check_scheduler",
    "get_sampler",
    "image_seed",
    "initial_noise",
    "make_noise",
    "sample",
    "scale_initial_noise",
    "schedule_for",
    "training_sigmas",
]
