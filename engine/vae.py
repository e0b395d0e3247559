"""VAE encode and decode between pixels and the sampler's latent space, whole or tiled.

Tiles are 512 px with 64 px overlap for SDXL (Fooocus's sizes), relative to the model's native
side so the tiny demo model runs the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from diffusers import AutoencoderKL
from PIL import Image

from engine.imaging import LATENT_SCALE, image_to_tensor, tensor_to_image, tiled_apply
from engine.memory import MemoryPlan, is_out_of_memory, release_memory
from engine.models.components import SDXLComponents

# VAE tiles: 512 px with 64 px overlap for SDXL, relative to native.
VAE_TILE_FRACTION = 0.5
VAE_TILE_OVERLAP = 0.125
SDXL_SCALING_FACTOR = 0.13025
# Playground v2.5's vae/config.json (playgroundai/playground-v2.5-1024px-aesthetic on Hugging Face,
# the same values as ComfyUI's SDXL_Playground_2_5 latent format).
PLAYGROUND_SCALING_FACTOR = 0.5
PLAYGROUND_LATENTS_MEAN = (-1.6574, 1.886, -1.383, 2.5155)
PLAYGROUND_LATENTS_STD = (8.4927, 5.9022, 6.5498, 5.2299)


def vae_tile(native: int) -> tuple[int, int]:
    """(tile, overlap) of tiled VAE work in pixels: 512/64 for SDXL, relative to native."""
    tile = max(4 * LATENT_SCALE, int(native * VAE_TILE_FRACTION)) // LATENT_SCALE * LATENT_SCALE
    overlap = max(LATENT_SCALE, int(tile * VAE_TILE_OVERLAP)) // LATENT_SCALE * LATENT_SCALE
    return tile, overlap


@dataclass(frozen=True)
class LatentFormat:
    """How the sampler's latent space ("k-space") relates to the VAE's raw latents.

    k = (raw - shift - mean) · scale / std per channel; SDXL has no mean/std (k = raw · 0.13025),
    Playground v2.5 normalises each channel (scale 0.5), like diffusers' SDXL pipelines do when the
    VAE config has ``latents_mean``/``latents_std``.
    """

    scale: float
    shift: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def of_vae(cls, vae: AutoencoderKL, *, playground: bool = False) -> LatentFormat:
        """The format to use with ``vae``; ``playground`` when sampling Playground v2.5.

        Like Fooocus, the scheduler decides (``edm_playground_v2.5`` means Playground), not the
        file. Playground's per-channel statistics come from the VAE config when it has them (a
        sidecar ``<stem>.config/vae/config.json``), else from Playground's published config.
        """
        config = vae.config
        shift = float(getattr(config, "shift_factor", None) or 0.0)
        if not playground:
            return cls(float(config.scaling_factor), shift)
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            return cls(float(config.scaling_factor), shift, tuple(mean), tuple(std))
        mean, std = PLAYGROUND_LATENTS_MEAN, PLAYGROUND_LATENTS_STD
        return cls(PLAYGROUND_SCALING_FACTOR, shift, mean, std)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean or (0.0,), dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std or (1.0,), dtype=like.dtype, device=like.device)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def from_vae(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> k-space."""
        mean, std = self._stats(raw)
        return (raw - self.shift - mean) * self.scale / std

    def to_vae(self, latent: torch.Tensor) -> torch.Tensor:
        """k-space -> raw VAE latents."""
        mean, std = self._stats(latent)
        return latent * std / self.scale + mean + self.shift

    def to_sdxl(self, latent: torch.Tensor) -> torch.Tensor:
        """k-space -> SDXL's k-space (what the step previews' colour map expects)."""
        if self.mean is None:
            return latent  # an SDXL-type space already (the preview ignores scale differences)
        return self.to_vae(latent) * SDXL_SCALING_FACTOR


def _whole_or_tiled(
    whole: Callable[[], torch.Tensor], tiles: Callable[[], torch.Tensor], tiled: bool
) -> torch.Tensor:
    """``tiles()`` when asked; else ``whole()``, retried tiled if the device runs out of memory."""
    if tiled:
        return tiles()
    try:
        return whole()
    except Exception as exc:  # torch.OutOfMemoryError, or an older torch's RuntimeError
        if not is_out_of_memory(exc):
            raise
    release_memory()  # outside the handler: the failed attempt's tensors are gone
    return tiles()


def encode_to_latent(
    components: SDXLComponents,
    image: Image.Image,
    *,
    tiled: bool = False,
    latent_format: LatentFormat | None = None,
    plan: MemoryPlan | None = None,
) -> torch.Tensor:
    """VAE-encode an RGB image (sides multiples of 8) to a k-space latent [1, 4, H/8, W/8].

    Uses the posterior mean (deterministic; the SDXL posterior's spread is negligible).
    ``latent_format`` defaults to the VAE's own (SDXL) one. Tiled when asked, when ``plan`` says
    the whole image would not fit, or after running out of memory.
    """
    vae = components.vae
    fmt = latent_format or LatentFormat.of_vae(vae)
    pixels = image_to_tensor(image) * 2.0 - 1.0
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    tiled = tiled or (plan is not None and plan.tile_encode(image.height, image.width))

    def encode(window: torch.Tensor) -> torch.Tensor:
        return vae.encode(window).latent_dist.mean

    def tiles() -> torch.Tensor:
        tile, overlap = vae_tile(components.native_size)
        return tiled_apply(encode, pixels, tile, overlap, Fraction(1, LATENT_SCALE))

    latent = _whole_or_tiled(lambda: encode(pixels), tiles, tiled)
    return fmt.from_vae(latent.float())


def decode_latent(
    components: SDXLComponents,
    latent: torch.Tensor,
    *,
    tiled: bool = False,
    latent_format: LatentFormat | None = None,
    plan: MemoryPlan | None = None,
) -> Image.Image:
    """VAE-decode one latent [1, 4, h, w] (k-space) to an RGB image; ``latent_format``, ``plan``
    and the tiling as in :func:`encode_to_latent`."""
    vae = components.vae
    fmt = latent_format or LatentFormat.of_vae(vae)
    scaled = fmt.to_vae(latent.float()).to(device=vae.device, dtype=vae.dtype)
    tiled = tiled or (plan is not None and plan.tile_decode(latent.shape[-2], latent.shape[-1]))

    def decode(window: torch.Tensor) -> torch.Tensor:
        return vae.decode(window).sample

    def tiles() -> torch.Tensor:
        tile, overlap = vae_tile(components.native_size)
        step = LATENT_SCALE
        return tiled_apply(decode, scaled, tile // step, overlap // step, Fraction(step))

    pixels = _whole_or_tiled(lambda: decode(scaled), tiles, tiled)
    return tensor_to_image((pixels.float() + 1.0) / 2.0)
