"""DPM-Solver (the original, noise-predicting one) in its "fast" and "adaptive" drivers.

Both work in t = lambda = -log(sigma) between the schedule's first sigma and its last non-zero one
(like ComfyUI, they ignore the sigmas in between and finish at sigma_min, not 0). One step of
order k from t to t + h uses k model evaluations:

* order 1: x' = x - sigma' · expm1(h) · eps
* order 2 (r = 1/2): eps_r at t + h/2,
  x' = x - sigma'·expm1(h)·eps - sigma'/(2r)·expm1(h)·(eps_r - eps)
* order 3 (r1 = 1/3, r2 = 2/3): eps at t + h/3 and t + 2h/3 with the second-order phi terms.
"""

from __future__ import annotations

import math

import torch

from engine.sampling.common import Denoiser, StepCallback
from engine.sampling.noise import NoiseSampler

ADAPTIVE_RTOL = 0.05
ADAPTIVE_ATOL = 0.0078
ADAPTIVE_H_INIT = 0.05
ADAPTIVE_SAFETY = 0.81
ADAPTIVE_ORDER = 3
ADAPTIVE_MAX_TRIES = 1000  # a guard only: the controller converges in a few dozen


class _Solver:
    """Model evaluations in eps form at log-sigma time t, cached per step."""

    def __init__(self, model: Denoiser, callback: StepCallback) -> None:
        self.model = model
        self.callback = callback
        self.calls = 0

    @staticmethod
    def sigma(t: float) -> float:
        return math.exp(-t)

    def eps(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, denoised) of the model at x, t."""
        sigma = self.sigma(t)
        denoised = self.model(x, sigma)
        self.calls += 1
        return (x - denoised) / sigma, denoised

    def step_1(self, x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor) -> torch.Tensor:
        return x - self.sigma(t_next) * math.expm1(t_next - t) * eps

    def step_2(
        self,
        x: torch.Tensor,
        t: float,
        t_next: float,
        eps: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 0.5,
    ) -> torch.Tensor:
        h = t_next - t
        if "eps_r1" not in cache:
            s1 = t + r1 * h
            u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
            cache["eps_r1"] = self.eps(u1, s1)[0]
        sigma_next, e = self.sigma(t_next), math.expm1(h)
        return x - sigma_next * e * eps - sigma_next / (2 * r1) * e * (cache["eps_r1"] - eps)

    def step_3(
        self,
        x: torch.Tensor,
        t: float,
        t_next: float,
        eps: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 1 / 3,
        r2: float = 2 / 3,
    ) -> torch.Tensor:
        h = t_next - t
        if "eps_r1" not in cache:
            s1 = t + r1 * h
            u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
            cache["eps_r1"] = self.eps(u1, s1)[0]
        if "eps_r2" not in cache:
            s2 = t + r2 * h
            u2 = (
                x
                - self.sigma(s2) * math.expm1(r2 * h) * eps
                - self.sigma(s2)
                * (r2 / r1)
                * (math.expm1(r2 * h) / (r2 * h) - 1)
                * (cache["eps_r1"] - eps)
            )
            cache["eps_r2"] = self.eps(u2, s2)[0]
        sigma_next, e = self.sigma(t_next), math.expm1(h)
        return x - sigma_next * e * eps - sigma_next / r2 * (e / h - 1) * (cache["eps_r2"] - eps)


def _endpoints(sigmas: list[float]) -> tuple[float, float]:
    """(t_start, t_end) = (-log sigma_max, -log sigma_min), sigma_min the last non-zero sigma."""
    sigma_min = sigmas[-1] if sigmas[-1] > 0.0 else sigmas[-2]
    return -math.log(sigmas[0]), -math.log(sigma_min)


def fast_orders(nfe: int) -> list[int]:
    """The step orders of DPM-Solver-fast for ``nfe`` model evaluations (they sum to ``nfe``)."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


def dpm_fast(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """DPM-Solver-fast: as many model calls as steps, spent on third-order steps evenly spaced
    in t, with a second and first-order (or one lower-order) step at the end."""
    if len(sigmas) <= 1:
        return x
    t_start, t_end = _endpoints(sigmas)
    orders = fast_orders(len(sigmas) - 1)
    solver = _Solver(model, cb)
    times = torch.linspace(t_start, t_end, len(orders) + 1, dtype=torch.float64).tolist()
    for i, order in enumerate(orders):
        t, t_next = times[i], times[i + 1]
        eps, denoised = solver.eps(x, t)
        cb(i, x, denoised)
        cache: dict[str, torch.Tensor] = {}
        if order == 1:
            x = solver.step_1(x, t, t_next, eps)
        elif order == 2:
            x = solver.step_2(x, t, t_next, eps, cache)
        else:
            x = solver.step_3(x, t, t_next, eps, cache)
    return x


class StepSizeController:
    """Integral step-size control (ComfyUI's defaults: I = 1, P = D = 0): h *= limiter(
    (1/error)^(1/order)), a step is accepted when that factor is at least the safety 0.81."""

    def __init__(self, h: float, order: float, safety: float = ADAPTIVE_SAFETY) -> None:
        self.h = h
        self.order = order
        self.safety = safety

    def propose(self, error: float) -> bool:
        """Update h from the step's error estimate; True when the step is accepted."""
        factor = (1.0 / (error + 1e-8)) ** (1.0 / self.order)
        factor = 1.0 + math.atan(factor - 1.0)
        self.h *= factor
        return factor >= self.safety


def dpm_adaptive(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """Adaptive DPM-Solver-3: each try makes a 2nd and a 3rd-order estimate from the same model
    calls, their scaled difference (rtol 0.05, atol 0.0078) is the error, and the controller
    grows or shrinks h. It decides its own number of steps; the requested count is ignored."""
    t, t_end = _endpoints(sigmas)
    solver = _Solver(model, cb)
    control = StepSizeController(ADAPTIVE_H_INIT, ADAPTIVE_ORDER)
    x_prev = x
    for tries in range(ADAPTIVE_MAX_TRIES):
        if t >= t_end - 1e-5:
            break
        t_next = min(t_end, t + control.h)
        eps, denoised = solver.eps(x, t)
        cache: dict[str, torch.Tensor] = {}
        x_low = solver.step_2(x, t, t_next, eps, cache, r1=1 / 3)
        x_high = solver.step_3(x, t, t_next, eps, cache)
        scale = torch.clamp(ADAPTIVE_RTOL * torch.maximum(x_low.abs(), x_prev.abs()), ADAPTIVE_ATOL)
        error = float(torch.linalg.norm((x_low - x_high) / scale)) / math.sqrt(x.numel())
        if control.propose(error):
            x_prev = x_low
            x = x_high
            t = t_next
        cb(tries, x, denoised)
    return x
