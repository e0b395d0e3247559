"""UniPC (unified predictor-corrector), multistep, data prediction, order up to 3.

Written in k-space (x = x0 + sigma·eps), where the variance-preserving scale factors cancel: with
lambda = -log(sigma), h = lambda_t - lambda_prev and hh = -h,

    x_t = (sigma_t / sigma_prev)·x - expm1(hh)·m_prev - B(h)·sum_k rho_k·D_k

where m are the model's x0 estimates, D_k = (m_k - m_prev) / r_k the scaled differences of the
earlier ones (r_k their lambda distance over h) and rho solves the order conditions
R·rho = b (R_ik = r_k^(i-1), b_i = i!·phi_(i+1)(hh)/B(h)). B(h) = hh for the "bh1" variant and
expm1(hh) for "bh2". The predictor (UniP) uses the known estimates; the corrector (UniC) then
refines x_t with the model's estimate at the predicted x_t, and that estimate is reused by the
next step, so each step costs one model call. As in ComfyUI, a final sigma of 0 is replaced by
0.001, the order is min(3, steps - 1) and the last steps lower their order.
"""

from __future__ import annotations

import math

import torch

from engine.sampling.common import Denoiser, StepCallback
from engine.sampling.noise import NoiseSampler

FINAL_SIGMA = 0.001
MAX_ORDER = 3


def _update(
    x: torch.Tensor,
    estimates: list[torch.Tensor],
    sigmas_prev: list[float],
    sigma: float,
    order: int,
    variant: str,
    model_t: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniP step (and UniC when ``model_t`` is given): (x_t predicted, x_t corrected)."""
    m_prev, sigma_prev = estimates[-1], sigmas_prev[-1]
    lam_prev = -math.log(sigma_prev)
    h = -math.log(sigma) - lam_prev
    hh = -h
    ratios: list[float] = []
    diffs: list[torch.Tensor] = []
    for k in range(1, order):
        r = (-math.log(sigmas_prev[-(k + 1)]) - lam_prev) / h
        ratios.append(r)
        diffs.append((estimates[-(k + 1)] - m_prev) / r)
    ratios.append(1.0)
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rows, rhs = [], []
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in ratios])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    x_base = (sigma / sigma_prev) * x - h_phi_1 * m_prev
    x_pred = x_base
    if diffs:
        if order == 2:
            rhos_p = [0.5]
        else:
            solved = torch.linalg.solve(
                torch.tensor([row[:-1] for row in rows[:-1]], dtype=torch.float64),
                torch.tensor(rhs[:-1], dtype=torch.float64),
            )
            rhos_p = solved.tolist()
        x_pred = x_base - b_h * sum(r * d for r, d in zip(rhos_p, diffs, strict=True))
    if model_t is None:
        return x_pred, x_pred
    if order == 1:
        rhos_c = [0.5]
    else:
        rhos_c = torch.linalg.solve(
            torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
        ).tolist()
    correction = rhos_c[-1] * (model_t - m_prev)
    for r, d in zip(rhos_c[:-1], diffs, strict=True):
        correction = correction + r * d
    return x_pred, x_base - b_h * correction


def _unipc(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    callback: StepCallback,
    variant: str,
) -> torch.Tensor:
    times = list(sigmas)
    if times[-1] == 0.0:
        times[-1] = FINAL_SIGMA
    steps = len(times) - 1
    order = max(1, min(MAX_ORDER, len(times) - 2))
    m = model(x, times[0])
    callback(0, x, m)
    estimates, used = [m], [times[0]]
    for step in range(1, steps + 1):
        step_order = min(order, step, steps + 1 - step)
        sigma = times[step]
        x_pred, _ = _update(x, estimates, used, sigma, step_order, variant, None)
        if step == steps:
            x = x_pred
            break
        m = model(x_pred, sigma)
        _, x = _update(x, estimates, used, sigma, step_order, variant, m)
        callback(step, x, m)
        estimates.append(m)
        used.append(sigma)
        del estimates[:-order], used[:-order]
    return x


def uni_pc(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """UniPC with B(h) = h ("bh1")."""
    return _unipc(model, x, sigmas, cb, "bh1")


def uni_pc_bh2(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, cb: StepCallback
) -> torch.Tensor:
    """UniPC with B(h) = expm1(h) ("bh2")."""
    return _unipc(model, x, sigmas, cb, "bh2")
