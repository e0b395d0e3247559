"""The super-resolution model of Upscale and of small inpaint crops (reference §7, §8.3).

Fooocus uses one ESRGAN (RRDBNet) file, ``fooocus_upscaler_s409985e5.bin``: a pickled state dict
whose residual-in-residual blocks are named ``residual_block_N`` where the original ESRGAN layout
says ``RDBN``. ``spandrel`` recognises the architecture (and its scale) from the renamed keys. The
model runs on overlapping tiles so any image size fits in memory.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image

from engine.imaging import image_to_tensor, tensor_to_image, tiled_apply

TILE = 512
TILE_OVERLAP = 32


class UpscalerFormatError(ValueError):
    """The file is not an ESRGAN-family model spandrel can load."""


def rename_fooocus_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fooocus's block names back to the original ESRGAN ones (``residual_block_`` → ``RDB``)."""
    return {key.replace("residual_block_", "RDB"): value for key, value in state.items()}


class Upscaler:
    """An ESRGAN-family model: ``upscaler(image)`` returns the image ``scale`` times larger."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from spandrel import ImageModelDescriptor, ModelLoader

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "params_ema" in state:
                state = state["params_ema"]
            descriptor = ModelLoader().load_from_state_dict(rename_fooocus_keys(state))
        except Exception as exc:  # spandrel raises many kinds for unknown layouts
            raise UpscalerFormatError(f"cannot load upscaler {path.name}: {exc}") from exc
        if not isinstance(descriptor, ImageModelDescriptor):
            raise UpscalerFormatError(f"{path.name} is not an image-to-image model")
        self.model = descriptor.model.eval().requires_grad_(False).to(device)
        self.scale = int(descriptor.scale)
        self.device = device

    def __call__(
        self, image: Image.Image, *, tile: int = TILE, overlap: int = TILE_OVERLAP
    ) -> Image.Image:
        """Super-resolve ``image`` tile by tile; overlaps are averaged."""
        pixels = image_to_tensor(image)
        with torch.inference_mode():
            out = upscale_tiled(self.model, pixels, self.scale, tile, overlap, self.device)
        return tensor_to_image(out)


def upscale_tiled(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    device: torch.device,
) -> torch.Tensor:
    """Run ``model`` on ``tile``-sized windows of ``pixels`` [1, 3, H, W] (0..1), overlapping by
    ``overlap`` px, cross-faded into one [1, 3, H·s, W·s] result on the CPU."""
    dtype = next(model.parameters()).dtype

    def run(window: torch.Tensor) -> torch.Tensor:
        return model(window.to(device=device, dtype=dtype)).float().cpu()

    return tiled_apply(run, pixels, tile, overlap, Fraction(scale))
