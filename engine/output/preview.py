"""Cheap step previews: a linear map from SDXL latent channels to RGB, no VAE decode.

Each RGB value is a fixed linear combination of the four latent channels plus a bias, a good
approximation of what the SDXL VAE decodes a flat patch to. Applied to the current x0 estimate it
shows the image forming at latent resolution (1/8 of the output) for a few microseconds a step.
"""

from __future__ import annotations

import torch
from PIL import Image

# Fitted latent→RGB factors for the SDXL VAE latent space (rows: latent channels; columns: R, G,
# B), as commonly used for SDXL previews. Output is in [-1, 1].
SDXL_LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview(x0: torch.Tensor) -> Image.Image:
    """An RGB image (latent resolution) of the first sample of ``x0`` [B, 4, h, w]."""
    latent = x0[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", latent, SDXL_LATENT_RGB) + SDXL_LATENT_RGB_BIAS
    pixels = ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.numpy())
