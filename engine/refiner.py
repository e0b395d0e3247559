"""One image's sampler run with the refiner (§4), and the sigmas a sampler walks.

The refiner takes over after the base model's call at step ``switch``: 'joint' swaps the model
inside one sampler run (multistep history and noise continue), 'separate' runs the sampler twice
(base to sigma_switch, then the refiner from there, sharing the noise source).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from engine.guidance import FooocusDenoiser
from engine.sampling import (
    Denoiser,
    NoiseSampler,
    NoiseSchedule,
    StepCallback,
    build_sigmas,
    get_sampler,
    make_noise,
    sample,
)


def sampler_sigmas(
    sampler: str, scheduler_rule: str, steps: int, schedule: NoiseSchedule
) -> list[float]:
    """The sigmas a sampler walks: Fooocus gives dpm_2(_ancestral) and uni_pc(_bh2) a schedule of
    steps + 1 with its second-to-last sigma dropped."""
    if not get_sampler(sampler).extra_step:
        return build_sigmas(scheduler_rule, steps, schedule).tolist()
    longer = build_sigmas(scheduler_rule, steps + 1, schedule).tolist()
    return [*longer[:-2], longer[-1]]


class _SwitchingDenoiser:
    """Calls the base denoiser until :meth:`switch`, the refiner's afterwards."""

    def __init__(self, base: FooocusDenoiser, refiner: FooocusDenoiser | None) -> None:
        self.active = base
        self.refiner = refiner
        self.schedule = base.schedule

    def switch(self) -> None:
        if self.refiner is not None:
            self.active = self.refiner

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.active(x, sigma)


def sample_with_refiner(
    sampler: str,
    models: tuple[FooocusDenoiser, FooocusDenoiser | None],
    x: torch.Tensor,
    sigmas: list[float],
    *,
    switch: int,
    separate: bool,
    seed: int,
    callback: StepCallback,
    base_patch: AbstractContextManager[object],
    wrap: Callable[[Denoiser], Denoiser],
    noise: NoiseSampler | None = None,
) -> torch.Tensor:
    """Sample ``x`` down ``sigmas`` with the base model, then the refiner (if any) from ``switch``.

    ``base_patch`` is held while the base model runs (FreeU patches the base UNet only, as
    Fooocus does); ``wrap`` wraps every model the sampler calls (the inpaint blend). ``noise``
    replaces the noise source seeded with ``seed`` (a batch's, one seeded source per image).
    """
    base, refiner = models
    steps = len(sigmas) - 1
    if refiner is None:
        switch = steps
    if noise is None:
        noise = make_noise(get_sampler(sampler).noise, x, sigmas, seed)
    if separate and refiner is not None and switch < steps:
        with base_patch:
            x = sample(
                sampler,
                wrap(base),
                x,
                sigmas[: switch + 1],
                seed=seed,
                callback=callback,
                noise=noise,
            )

        def shifted(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            callback(step + switch, x, denoised)

        return sample(
            sampler, wrap(refiner), x, sigmas[switch:], seed=seed, callback=shifted, noise=noise
        )
    model = _SwitchingDenoiser(base, refiner)

    def on_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if step == switch:
            model.switch()
        callback(step, x, denoised)

    with base_patch:
        return sample(sampler, wrap(model), x, sigmas, seed=seed, callback=on_step, noise=noise)
