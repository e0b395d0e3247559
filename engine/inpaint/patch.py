"""Inpaint on the model side (reference §8.4): Fooocus's inpaint patch and head, latent blending.

- The patch file (``inpaint_v26.fooocus.patch`` and its v1/v2.5 siblings) is a pickled dict from
  LDM UNet weight names to (uint8 tensor, min, max); the weight delta is u8/255·(max−min)+min,
  added at strength 1. It is applied for the request and taken off for the last steps.
- The head (``fooocus_inpaint_head.pth``, ``{"head": [C, 5, 3, 3]}``) convolves the latent mask
  and the masked image's latent (replicate padding, no bias); the result is added to the output of
  the UNet's first convolution while the patch is on.
- Every model call blends: the known area is re-imposed on x (the fill latent noised to sigma)
  before the call and on the x0 estimate after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from engine.models import checkpoint_keys as keys
from engine.sampling import Denoiser
from engine.sampling.common import model_schedule

UNPATCHED_FRACTION = 0.2  # the last 20% of the steps run without the patch and head
LDM_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


class InpaintFormatError(ValueError):
    """A patch or head file that does not fit the loaded UNet."""


def ldm_to_diffusers_names(unet: UNet2DConditionModel) -> dict[str, str]:
    """LDM weight name (without prefix) -> diffusers parameter name of ``unet``."""
    state = unet.state_dict()
    by_tensor = {id(tensor): name for name, tensor in state.items()}
    original = keys.unet_to_original(state, unet.config)
    names: dict[str, str] = {}
    for ldm_name, tensor in original.items():
        diffusers_name = by_tensor.get(id(tensor))
        if diffusers_name is not None:
            names[ldm_name.removeprefix(LDM_PREFIXES[0])] = diffusers_name
    return names


def load_patch(path: Path, unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The patch file as float deltas keyed by diffusers parameter name (kept on the CPU)."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    names = ldm_to_diffusers_names(unet)
    params = dict(unet.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        ldm = key
        for prefix in LDM_PREFIXES:
            ldm = ldm.removeprefix(prefix)
        target = names.get(ldm)
        if target is None or target not in params:
            raise InpaintFormatError(f"{path.name}: {key} is not a weight of this UNet")
        quantised, low, high = value
        delta = quantised.float() / 255.0 * (high.float() - low.float()) + low.float()
        if delta.shape != params[target].shape:
            raise InpaintFormatError(f"{path.name}: {key} has shape {tuple(delta.shape)}")
        deltas[target] = delta
    return deltas


class InpaintPatch:
    """Adds the patch deltas to a UNet's weights and restores the exact originals on removal."""

    def __init__(self, unet: UNet2DConditionModel, deltas: dict[str, torch.Tensor]) -> None:
        self.unet = unet
        self.deltas = deltas
        self._saved: dict[str, torch.Tensor] = {}

    @property
    def applied(self) -> bool:
        """Whether the deltas are in the weights now."""
        return bool(self._saved)

    @torch.no_grad()
    def apply(self) -> None:
        """Add the deltas (idempotent)."""
        if self._saved:
            return
        params = dict(self.unet.named_parameters())
        for name, delta in self.deltas.items():
            weight = params[name]
            self._saved[name] = weight.detach().to("cpu", copy=True)
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))

    @torch.no_grad()
    def remove(self) -> None:
        """Put the saved original weights back (idempotent)."""
        params = dict(self.unet.named_parameters())
        for name, original in self._saved.items():
            params[name].copy_(original.to(params[name].device))
        self._saved = {}


def load_head(path: Path) -> torch.Tensor:
    """The head's convolution weight [C, 5, 3, 3]."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    head = raw.get("head") if isinstance(raw, dict) else None
    if not isinstance(head, torch.Tensor) or head.dim() != 4 or head.shape[1] != 5:
        raise InpaintFormatError(
            f"{path.name} is not an inpaint head (expected 'head' [C, 5, 3, 3])"
        )
    return head


def head_features(
    head: torch.Tensor, latent_mask: torch.Tensor, latent: torch.Tensor
) -> torch.Tensor:
    """conv3x3(cat(mask, latent)) with replicate padding: what the head adds after conv_in."""
    x = torch.cat([latent_mask, latent], dim=1)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, head.to(device=x.device, dtype=x.dtype))


@contextmanager
def head_hook(
    unet: UNet2DConditionModel, features: torch.Tensor, active: list[bool]
) -> Iterator[None]:
    """Add ``features`` to the output of ``unet.conv_in`` while ``active[0]`` is True."""

    def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        if not active[0]:
            return output
        return output + features.to(device=output.device, dtype=output.dtype)

    handle = unet.conv_in.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class BlendingDenoiser:
    """Keeps the unmasked area on the known image: before each call x takes the fill latent
    noised to sigma (fresh CPU noise seeded seed+1) outside the mask, and after it the x0
    estimate takes the fill latent there. ``mask`` is 1 where the model paints. It carries the
    ``schedule`` of the model it wraps (tcd reads its timesteps through the wrapper)."""

    def __init__(self, inner: Denoiser, fill: torch.Tensor, mask: torch.Tensor, seed: int) -> None:
        self.inner = inner
        self.schedule = model_schedule(inner)
        self.fill = fill
        self.mask = mask
        self._generator = torch.Generator(device="cpu").manual_seed(seed + 1)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        noise = torch.randn(tuple(self.fill.shape), generator=self._generator, dtype=torch.float32)
        fill = self.fill.to(x.device)
        mask = self.mask.to(device=x.device, dtype=x.dtype)
        known = fill + sigma * noise.to(device=x.device)
        x = x * mask + known.to(x.dtype) * (1.0 - mask)
        denoised = self.inner(x, sigma)
        return denoised * mask + fill.to(denoised.dtype) * (1.0 - mask)


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int], scale: int = 8) -> torch.Tensor:
    """Pixel mask [1, 1, H, W] in 0..1 -> latent mask [1, 1, h, w]: bilinear to (8h, 8w), rounded,
    8x8 max-pooled, so any painted pixel marks its latent cell."""
    h, w = latent_hw
    up = F.interpolate(mask, size=(h * scale, w * scale), mode="bilinear", align_corners=False)
    return F.max_pool2d(up.round(), scale)
