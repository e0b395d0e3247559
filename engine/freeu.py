"""FreeU in Fooocus's V2 form (reference §3.5), as pre-hooks on the UNet's decoder resnets.

Every decoder resnet receives ``cat([h, skip])``. When h has 4x (or 2x) the UNet's base channel
count, the first half of h's channels is amplified by 1 + (b - 1)·m, m being h's channel mean
min-max normalised per sample to [0, 1] (so the boost follows the image's structure), and the
skip's lowest frequencies (the central 2x2 of its shifted spectrum) are scaled by s.
For SDXL (base 320) that is b1/s1 on the six resnets fed 1280 channels and b2/s2 on the three fed
640, including the first resnet of the next level, which diffusers' own FreeU leaves out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel

FREQUENCY_BOX = 1  # half-width of the low-frequency box the skip scale applies to


def structure_scale(h: torch.Tensor, b: float) -> torch.Tensor:
    """Multiply the first half of h's channels by 1 + (b - 1)·m (m = normalised channel mean)."""
    mean = h.mean(dim=1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    normalised = (mean - low) / (high - low)
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * ((b - 1.0) * normalised + 1.0), h[:, half:]], dim=1)


def fourier_filter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale the central (lowest-frequency) 2x2 of x's centred 2-D spectrum by ``scale``."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    row, col = height // 2, width // 2
    mask = torch.ones_like(spectrum.real)
    box = FREQUENCY_BOX
    mask[..., row - box : row + box, col - box : col + box] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def _decoder_inputs(unet: UNet2DConditionModel) -> list[tuple[torch.nn.Module, int]]:
    """(resnet, width of its h input) for every decoder resnet, h being what comes from below."""
    h_width = int(unet.config.block_out_channels[-1])  # the middle block's output
    found: list[tuple[torch.nn.Module, int]] = []
    for block in unet.up_blocks:
        for resnet in block.resnets:
            found.append((resnet, h_width))
            h_width = int(resnet.out_channels)
    return found


@contextmanager
def freeu(unet: UNet2DConditionModel, b1: float, b2: float, s1: float, s2: float) -> Iterator[None]:
    """Apply FreeU V2 to ``unet`` inside the ``with`` block (hooks removed on exit)."""
    base = int(unet.config.block_out_channels[0])
    factors = {4 * base: (b1, s1), 2 * base: (b2, s2)}
    handles = []
    for resnet, h_width in _decoder_inputs(unet):
        if h_width not in factors:
            continue
        b, s = factors[h_width]

        def hook(
            module: torch.nn.Module,
            args: tuple[torch.Tensor, ...],
            width: int = h_width,
            b: float = b,
            s: float = s,
        ) -> tuple[torch.Tensor, ...]:
            joined, *rest = args
            h, skip = joined[:, :width], joined[:, width:]
            return (torch.cat([structure_scale(h, b), fourier_filter(skip, s)], dim=1), *rest)

        handles.append(resnet.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
