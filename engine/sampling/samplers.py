"""k-diffusion-style samplers with one interface, re-derived from their update rules.

A sampler walks ``x`` from ``sigmas[0]`` down to ``sigmas[-1] == 0``:
``sampler(model, x, sigmas, noise, callback) -> x``, where ``model(x, sigma)`` returns the
denoised estimate, ``noise(sigma, sigma_next)`` returns unit-variance noise for stochastic steps and
``callback(step, x, denoised)`` runs once per step, after the step's first model call (so a caller
can preview the x0 estimate and stop between steps).

Notation: lambda = -log(sigma) ("t" below); h = lambda_next - lambda is the step in log-SNR/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from engine.options import SAMPLERS
from engine.sampling import dpm_solver, higher_order, unipc
from engine.sampling.common import Denoiser, Sampler, StepCallback, ancestral_split
from engine.sampling.noise import BrownianNoise, GaussianNoise, NoiseSampler
from engine.types import EngineInputError, FeatureNotSupportedError

NoiseKind = Literal["none", "gaussian", "brownian"]
_ancestral_split = ancestral_split


def euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0) / sigma."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        callback(i, x, denoised)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


def euler_ancestral(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise of std sigma_up (eta 1)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        callback(i, x, denoised)
        sigma_down, sigma_up = _ancestral_split(sigma, sigma_next)
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0.0:
            x = x + noise(sigma, sigma_next) * sigma_up
    return x


def dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """DPM-Solver++(2M): exact exponential integrator with a linear x0 extrapolation.

    x_next = (sigma_next/sigma)·x - expm1(-h)·D, where D blends this and the previous x0 estimate
    with r = h_last/h; the first step and the final step to sigma 0 are first order.
    """
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        callback(i, x, denoised)
        if sigma_next == 0.0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            blended = denoised
            if old_denoised is not None:
                h_last = math.log(sigmas[i - 1]) - math.log(sigma)
                r = h_last / h
                blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * blended
        old_denoised = denoised
    return x


def dpmpp_2m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint correction, eta 1 (Fooocus's default sampler).

    With eta 1 the linear part decays by (sigma_next/sigma)·e^(-h) and the x0 weight is
    1 - e^(-2h); the injected noise has std sigma_next·sqrt(1 - e^(-2h)).
    """
    old_denoised: torch.Tensor | None = None
    h_last: float | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        callback(i, x, denoised)
        if sigma_next == 0.0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            x0_weight = -math.expm1(-2.0 * h)
            x = (sigma_next / sigma) * math.exp(-h) * x + x0_weight * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * x0_weight / r * (denoised - old_denoised)
            x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(x0_weight)
            h_last = h
        old_denoised = denoised
    return x


def dpmpp_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """DPM-Solver++ SDE (second order, midpoint r = 1/2, eta 1): two model calls per step.

    Each stage is an ancestral DPM-Solver++(1) step: deterministic to sigma_down, then noise of std
    sigma_up. Stage 1 goes to the midpoint sigma_s = sqrt(sigma·sigma_next); stage 2 restarts from x
    with the midpoint's x0 estimate. The final step to sigma 0 is a plain Euler step.

    The step's scalars (t = -log sigma, the midpoint s, sigma = exp(-t) and the ancestral split)
    are computed in the latents' dtype, as Fooocus computes them on its sigma tensors, so the
    Brownian tree is queried at the same (float32) times.
    """
    dtype = x.dtype

    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=dtype)

    def split(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, ...]:
        up = torch.minimum(
            sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        )
        return (sigma_to**2 - up**2) ** 0.5, up

    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        callback(i, x, denoised)
        if sigma_next == 0.0:
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
            continue
        t, t_next = -scalar(sigma).log(), -scalar(sigma_next).log()
        s = t + (t_next - t) * 0.5
        sigma_t, sigma_s, sigma_n = (-t).exp(), (-s).exp(), (-t_next).exp()
        down, up = split(sigma_t, sigma_s)
        s_ = -down.log()
        x_2 = float((-s_).exp() / sigma_t) * x - float((t - s_).expm1()) * denoised
        x_2 = x_2 + noise(float(sigma_t), float(sigma_s)) * float(up)
        denoised_2 = model(x_2, float(sigma_s))
        down, up = split(sigma_t, sigma_n)
        t_n = -down.log()
        x = float((-t_n).exp() / sigma_t) * x - float((t - t_n).expm1()) * denoised_2
        x = x + noise(float(sigma_t), float(sigma_n)) * float(up)
    return x


def lcm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    noise: NoiseSampler,
    callback: StepCallback,
) -> torch.Tensor:
    """Latent Consistency sampling: jump to the x0 estimate, then re-noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        sigma_next = sigmas[i + 1]
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        x = denoised
        if sigma_next > 0.0:
            x = x + sigma_next * noise(sigmas[i], sigma_next)
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and the noise source it needs.

    ``extra_step``: Fooocus builds the schedule for steps + 1 and drops the second-to-last sigma
    for these samplers (still ``steps`` intervals, but a different last one).
    """

    name: str
    function: Sampler
    noise: NoiseKind
    extra_step: bool = False


SAMPLER_SPECS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("euler", euler, "none"),
        SamplerSpec("euler_ancestral", euler_ancestral, "gaussian"),
        SamplerSpec("heun", higher_order.heun, "none"),
        SamplerSpec("heunpp2", higher_order.heunpp2, "none"),
        SamplerSpec("dpm_2", higher_order.dpm_2, "none", extra_step=True),
        SamplerSpec("dpm_2_ancestral", higher_order.dpm_2_ancestral, "gaussian", extra_step=True),
        SamplerSpec("lms", higher_order.lms, "none"),
        SamplerSpec("dpm_fast", dpm_solver.dpm_fast, "none"),
        SamplerSpec("dpm_adaptive", dpm_solver.dpm_adaptive, "none"),
        SamplerSpec("dpmpp_2s_ancestral", higher_order.dpmpp_2s_ancestral, "gaussian"),
        SamplerSpec("dpmpp_sde", dpmpp_sde, "brownian"),
        SamplerSpec("dpmpp_sde_gpu", dpmpp_sde, "brownian"),
        SamplerSpec("dpmpp_2m", dpmpp_2m, "none"),
        SamplerSpec("dpmpp_2m_sde", dpmpp_2m_sde, "brownian"),
        SamplerSpec("dpmpp_2m_sde_gpu", dpmpp_2m_sde, "brownian"),
        SamplerSpec("dpmpp_3m_sde", higher_order.dpmpp_3m_sde, "brownian"),
        SamplerSpec("dpmpp_3m_sde_gpu", higher_order.dpmpp_3m_sde, "brownian"),
        SamplerSpec("ddpm", higher_order.ddpm, "gaussian"),
        SamplerSpec("lcm", lcm, "gaussian"),
        SamplerSpec("tcd", higher_order.tcd, "gaussian"),
        SamplerSpec("restart", higher_order.restart, "gaussian"),
        # In Fooocus 'ddim' is a deterministic Euler step in sigma space (DDIM with eta 0).
        SamplerSpec("ddim", euler, "none"),
        SamplerSpec("uni_pc", unipc.uni_pc, "none", extra_step=True),
        SamplerSpec("uni_pc_bh2", unipc.uni_pc_bh2, "none", extra_step=True),
    )
}
SUPPORTED_SAMPLERS: tuple[str, ...] = tuple(SAMPLER_SPECS)


def get_sampler(name: str) -> SamplerSpec:
    """The spec of sampler ``name``; typed errors for unknown and not-yet-supported names."""
    spec = SAMPLER_SPECS.get(name)
    if spec is not None:
        return spec
    if name in SAMPLERS:
        raise FeatureNotSupportedError("sampler_name", f"sampler '{name}' is not supported yet")
    raise EngineInputError("sampler_name", f"unknown sampler '{name}'")


def make_noise(kind: NoiseKind, x: torch.Tensor, sigmas: list[float], seed: int) -> NoiseSampler:
    """The noise source of ``kind`` for one image, seeded with its seed."""
    if kind == "brownian":
        positive = [s for s in sigmas if s > 0.0]
        return BrownianNoise(x, min(positive), max(positive), seed)
    if kind == "gaussian":
        return GaussianNoise(x, seed)
    return _no_noise


def _no_noise(sigma: float, sigma_next: float) -> torch.Tensor:
    raise RuntimeError("a deterministic sampler asked for noise")


def sample(
    name: str,
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    seed: int,
    callback: StepCallback | None = None,
    noise: NoiseSampler | None = None,
) -> torch.Tensor:
    """Run sampler ``name`` from ``x`` (already at ``sigmas[0]``) down to ``sigmas[-1]``.

    ``noise`` lets two runs share one noise source (the refiner's 'separate' swap); by default
    a fresh one is seeded with ``seed`` over this run's sigmas.
    """
    spec = get_sampler(name)
    sigma_list = [float(s) for s in sigmas]
    if noise is None:
        noise = make_noise(spec.noise, x, sigma_list, seed)
    return spec.function(model, x, sigma_list, noise, callback or _ignore_step)


def _ignore_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    return None
