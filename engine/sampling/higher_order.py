"""More k-diffusion-style samplers, re-derived from their update rules (same interface as
:mod:`engine.sampling.samplers`): Heun, Heun++, DPM-Solver-2 (plain and ancestral), linear
multistep, DPM++(2S) ancestral, DPM++(3M) SDE, DDPM, TCD and Restart.

Notation: x0 = denoised; d = (x - x0) / sigma is dx/dsigma; lambda = -log(sigma).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from engine.sampling.common import Denoiser, StepCallback, ancestral_split, model_schedule, to_d
from engine.sampling.noise import NoiseSampler
from engine.sampling.schedules import training_sigmas

TCD_GAMMA = 0.3  # Fooocus's (ComfyUI's) default "eta" of TCD
LMS_ORDER = 4


def heun(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Heun's second-order method (trapezoid rule on d); Euler for the final step to 0."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0.0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
        x = x + (d + d_2) / 2 * dt
    return x


def heunpp2(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Heun++: up to three slope evaluations per step (here, next, after next), weighted by
    their sigmas relative to the first sigma; Heun when one step is left, Euler on the last."""
    end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
        if sigmas[i + 2] == end:
            w2 = sigma_next / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
            continue
        sigma_after = sigmas[i + 2]
        x_3 = x_2 + d_2 * (sigma_after - sigma_next)
        d_3 = to_d(x_3, sigma_after, model(x_3, sigma_after))
        w2 = sigma_next / (3 * sigmas[0])
        w3 = sigma_after / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    return math.exp((math.log(a) + math.log(b)) / 2)


def dpm_2(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """DPM-Solver-2 in k-diffusion's form: the slope at the log-midpoint drives the whole step."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0.0:
            x = x + d * (sigma_next - sigma)
            continue
        sigma_mid = _log_midpoint(sigma, sigma_next)
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
        x = x + d_2 * (sigma_next - sigma)
    return x


def dpm_2_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """DPM-Solver-2 down to sigma_down, then fresh noise of std sigma_up (eta 1)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0.0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigma)
        if sigma_next > 0.0:
            x = x + noise(sigma, sigma_next) * sigma_up
    return x


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """Adams-Bashforth weights of step ``i``: the integrals over [sigma_i, sigma_i+1] of the
    Lagrange basis polynomials through sigma_i, sigma_i-1, ... (``order`` nodes), exactly."""
    nodes = [sigmas[i - k] for k in range(order)]
    weights = []
    for j in range(order):
        poly = np.poly1d([1.0])
        for k in range(order):
            if k != j:
                poly *= np.poly1d([1.0, -nodes[k]]) / (nodes[j] - nodes[k])
        integral = np.polyint(poly)
        weights.append(float(integral(sigmas[i + 1]) - integral(sigmas[i])))
    return weights


def lms(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Linear multistep (order 4): x += sum_j c_j · d_(i-j) with the exact Lagrange weights."""
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        cb(i, x, denoised)
        slopes.insert(0, to_d(x, sigmas[i], denoised))
        del slopes[LMS_ORDER:]
        weights = lms_coefficients(sigmas, i, min(i + 1, LMS_ORDER))
        x = x + sum(w * d for w, d in zip(weights, slopes, strict=False))
    return x


def dpmpp_2s_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """DPM-Solver++(2S) to sigma_down with a midpoint (r = 1/2) evaluation, then noise sigma_up."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        if sigma_down == 0.0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            h = math.log(sigma) - math.log(sigma_down)
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_2 = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, sigma_mid)
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0.0:
            x = x + noise(sigma, sigma_next) * sigma_up
    return x


def dpmpp_3m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, eta 1: first-order SDE step plus second and third-order corrections
    from the two previous x0 estimates (phi_2, phi_3 of h_eta = 2h); noise std
    sigma_next·sqrt(1 - e^(-2h))."""
    previous: list[tuple[torch.Tensor, float]] = []  # (x0, h) of the last steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        h = math.log(sigma) - math.log(sigma_next)
        h_eta = 2.0 * h
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1.0
        if len(previous) >= 2:
            (d_1, h_1), (d_2, h_2) = previous[0], previous[1]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif previous:
            d_1, h_1 = previous[0]
            x = x + phi_2 * (denoised - d_1) / (h_1 / h)
        x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(-math.expm1(-2.0 * h))
        previous.insert(0, (denoised, h))
        del previous[2:]
    return x


def ddpm(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Ancestral DDPM steps, in the variance-preserving space of the model's alphas_cumprod.

    With abar = 1/(1+sigma²) and alpha = abar/abar_next: mean = (x_vp - (1-alpha)·eps /
    sqrt(1-abar)) / sqrt(alpha), plus noise of variance (1-alpha)(1-abar_next)/(1-abar).
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        cb(i, x, denoised)
        eps = to_d(x, sigma, denoised)
        abar, abar_next = 1.0 / (sigma**2 + 1.0), 1.0 / (sigma_next**2 + 1.0)
        alpha = abar / abar_next
        x_vp = x / math.sqrt(1.0 + sigma**2)
        x = (x_vp - (1.0 - alpha) * eps / math.sqrt(1.0 - abar)) / math.sqrt(alpha)
        if sigma_next > 0.0:
            std = math.sqrt((1.0 - alpha) * (1.0 - abar_next) / (1.0 - abar))
            x = (x + std * noise(sigma, sigma_next)) * math.sqrt(1.0 + sigma_next**2)
    return x


def tcd(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Trajectory Consistency Distillation sampling (gamma 0.3).

    Each step jumps along the model's trajectory to the earlier timestep
    s = floor((1 - gamma)·t_next) (x_s = x0 + sigma_s·eps), then re-noises from sigma_s up to
    sigma_next with fresh noise. As in ComfyUI, the last step lands on training timestep 0, whose
    sigma is not zero, and the result stays in the variance-preserving scale there.
    """
    schedule = model_schedule(model)
    full = training_sigmas()
    abar_s = []
    for k, s in enumerate(sigmas):
        t_s = 0 if k == len(sigmas) - 1 else math.floor((1 - TCD_GAMMA) * schedule.timestep(s))
        abar_s.append(1.0 / (1.0 + float(full[t_s]) ** 2))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        eps = to_d(x, sigma, denoised)
        abar = abar_s[i + 1]
        denoised = math.sqrt(abar) * denoised + math.sqrt(1.0 - abar) * eps
        cb(i, x, denoised)
        if sigma_next > 0.0:
            spread = math.sqrt(max(sigma_next**2 + 1.0 - 1.0 / abar, 0.0))
            x = denoised / math.sqrt(abar) + noise(sigma, sigma_next) * spread
        else:
            x = denoised * math.sqrt(1.0 + sigma_next**2)
    return x


def _karras(count: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    ramp = np.linspace(0.0, 1.0, count)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [float(v) for v in (high + ramp * (low - high)) ** rho] + [0.0]


def restart_plan(sigmas: list[float]) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) Heun steps of Restart sampling, restart segments included.

    Under 20 steps: the plain schedule. From 20 steps: the main schedule becomes Karras with
    steps - 9 points and one restart segment of 10 points from the sigma nearest 0.1 back up to
    the sigma nearest 2; from 36 steps: steps // 4 restart points, run twice.
    """
    steps = len(sigmas) - 1
    restart: dict[int, tuple[int, int, float]] = {}
    if steps >= 20:
        count, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = _karras(steps - count * times, sigmas[-2], sigmas[0])
        nearest = min(range(len(sigmas)), key=lambda k: abs(sigmas[k] - 0.1))
        restart = {nearest: (count + 1, times, 2.0)}
    plan: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restart:
            continue
        count, times, sigma_max = restart[i + 1]
        low = i + 1
        high = min(range(len(sigmas)), key=lambda k: abs(sigmas[k] - sigma_max))
        if high < low:
            segment = _karras(count, sigmas[low], sigmas[high])[:-1]
            for _ in range(times):
                plan.extend(itertools.pairwise(segment))
    return plan


def restart(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Restart sampling: Heun steps along :func:`restart_plan`; jumping back up to a larger sigma
    adds fresh noise of std sqrt(sigma_high² - sigma_low²)."""
    last: float | None = None
    for step, (sigma, sigma_next) in enumerate(restart_plan(sigmas)):
        if last is not None and last < sigma:
            x = x + noise(last, sigma) * math.sqrt(sigma**2 - last**2)
        denoised = model(x, sigma)
        cb(step, x, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0.0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
        last = sigma_next
    return x
