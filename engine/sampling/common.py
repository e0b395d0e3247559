"""What every sampler shares: the denoiser and callback interfaces and two step helpers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from engine.sampling.noise import NoiseSampler
from engine.sampling.schedules import NoiseSchedule


class Denoiser(Protocol):
    """``model(x, sigma) -> denoised``: the x0 estimate of latent ``x`` at noise level ``sigma``."""

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor: ...


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``callback(step_index, x, denoised)``, once per step."""

Sampler = Callable[[Denoiser, torch.Tensor, list[float], NoiseSampler, StepCallback], torch.Tensor]


def model_schedule(model: Denoiser) -> NoiseSchedule:
    """The noise schedule a sampler's model walks on (tcd needs its timesteps).

    Every denoiser and every wrapper around one (the refiner switch, the inpaint blend) carries
    the ``schedule`` of the model it wraps; a model without one is an error rather than a silent
    fall-back to the plain schedule, which would give tcd the wrong timesteps on a distilled one.
    """
    schedule = getattr(model, "schedule", None)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"{type(model).__name__} carries no noise schedule")
    return schedule


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step to ``sigma_next`` into a deterministic part (to sigma_down) and fresh noise.

    sigma_up^2 is the variance re-injected; sigma_down^2 + sigma_up^2 = sigma_next^2.
    """
    if sigma_next == 0.0:
        return 0.0, 0.0
    sigma_up = min(
        sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    )
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / sigma
