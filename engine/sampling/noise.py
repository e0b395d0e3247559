"""Seeded noise: the initial latent noise and the per-step noise sources of stochastic samplers.

All randomness derives from the image seed. Gaussian noise is drawn on the CPU in float32 and
moved, so one seed gives one image on any device: as in Fooocus on the CPU (``prepare_noise`` seeds
the global generator with the seed, the samplers' ``randn_like`` then continue that stream), one
generator per image is seeded with the seed, the initial latent noise is its first draw and the
per-step noise continues the same stream, so the two are independent. The Brownian tree of the SDE
samplers is built on the latent's device and seeded with the seed, as Fooocus builds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchsde

NoiseSampler = Callable[[float, float], torch.Tensor]
"""``noise(sigma, sigma_next)`` -> unit-variance noise for the step from sigma to sigma_next."""

SEED_MODULUS = 2**63
TREE_TOLERANCE = 1e-6  # torchsde's default resolution of the Brownian tree


def image_seed(seed: int, index: int, *, increment: bool = True) -> int:
    """The seed of image ``index`` of a request: seed + index (mod 2^63), or seed itself."""
    return (seed + index) % SEED_MODULUS if increment else seed % SEED_MODULUS


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise, CPU float32, from a generator seeded like ``torch.manual_seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def scale_initial_noise(
    noise: torch.Tensor, first_sigma: float, sigma_max: float, latent: torch.Tensor | None = None
) -> torch.Tensor:
    """Scale unit noise to the first sigma and add the starting latent (reference §2.2).

    A full denoise (first sigma at the model's sigma_max) scales by sqrt(1 + sigma^2), which is the
    variance of x = x0 + sigma * eps for unit-variance latents; a partial one scales by sigma.
    """
    full = math.isclose(first_sigma, sigma_max, rel_tol=1e-5) or first_sigma > sigma_max
    scale = math.sqrt(1.0 + first_sigma**2) if full else first_sigma
    scaled = noise * scale
    return scaled if latent is None else scaled + latent


class GaussianNoise:
    """Independent standard normal noise per call: the seed's CPU stream after the initial noise.

    The generator is seeded with the seed and first advanced past the draw :func:`initial_noise`
    makes for a latent shaped like ``like``, so the first step's noise is the stream's second draw,
    never the starting noise itself.
    """

    def __init__(self, like: torch.Tensor, seed: int) -> None:
        self._shape = tuple(like.shape)
        self._device = like.device
        self._dtype = like.dtype
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.randn(self._shape, generator=self._generator, dtype=torch.float32)

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """Fresh noise; the sigmas are ignored (ancestral samplers need no correlation)."""
        noise = torch.randn(self._shape, generator=self._generator, dtype=torch.float32)
        return noise.to(device=self._device, dtype=self._dtype)


class BrownianNoise:
    """Brownian-tree noise over [sigma_min, sigma_max], seeded with the image seed.

    The increment between two sigmas is normalised to unit variance. The tree makes the noise of a
    step depend only on the interval, not on how the schedule was cut into steps. The tree lives
    on the latent's device for every SDE sampler, with or without the "_gpu" suffix: Fooocus
    replaces the samplers' own (CPU) tree with one built on the latent's device. torchsde draws
    per device, so a CUDA run differs from a CPU run of the same seed, as in Fooocus.
    """

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int) -> None:
        self._device = like.device
        self._dtype = like.dtype
        self.tree_device = like.device
        w0 = torch.zeros(like.shape, dtype=torch.float32, device=self.tree_device)
        # Times as float32 values, like the sigma tensors they come from.
        t0 = float(torch.tensor(sigma_min, dtype=torch.float32))
        t1 = float(torch.tensor(sigma_max, dtype=torch.float32))
        self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed, tol=TREE_TOLERANCE)
        # The tree rounds its ends to the tolerance's digits; a query at the exact float32 sigma_max
        # would land just outside and warn, so queries are clamped to the rounded ends (the tree
        # would clamp them the same way).
        digits = -int(math.log10(TREE_TOLERANCE))
        self._t_min = round(t0, digits)
        self._t_max = round(t1, digits)

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """W(sigma_next) - W(sigma), scaled to unit variance (sign follows the direction)."""
        low, high = min(sigma, sigma_next), max(sigma, sigma_next)
        sign = 1.0 if sigma_next >= sigma else -1.0
        increment = self._tree(max(low, self._t_min), min(high, self._t_max))
        increment = increment * sign / math.sqrt(high - low)
        return increment.to(device=self._device, dtype=self._dtype)
