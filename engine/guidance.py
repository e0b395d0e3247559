"""The Fooocus denoiser: a diffusers SDXL UNet seen as a k-diffusion denoiser, with Fooocus's
guidance (sharpness, adaptive CFG, ADM scaler) applied in eps space (reference §3.1-3.3).

One call, ``denoiser(x, sigma)``, runs the UNet once on a batch holding the positive and (when
guidance_scale != 1) the negative conditioning, turns both eps predictions into x0 estimates and
combines them into one denoised latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from engine.plan import GuidanceSettings
from engine.sampling.schedules import NoiseSchedule

BILATERAL_WINDOW = 13
BILATERAL_SIGMA_SPACE = 3.0
BILATERAL_SIGMA_COLOR = 3.0
# Concatenated cond lengths are matched by repeating the shorter one; past this ratio a batch
# would mostly hold copies, so the two passes run separately.
MAX_REPEAT_RATIO = 4


@dataclass(frozen=True)
class TextConditioning:
    """Encoded prompt: ``embeds`` [1, 77·k, D] (both CLIPs concatenated) and ``pooled`` [1, P]."""

    embeds: torch.Tensor
    pooled: torch.Tensor


def round_to_64(value: float) -> int:
    """Nearest multiple of 64 (Python's round: ties to even), as Fooocus rounds target sizes."""
    return round(value / 64.0) * 64


@dataclass(frozen=True)
class AdmTimeIds:
    """The two SDXL size conditionings of one prompt side: (orig_h, orig_w, crop_top, crop_left,
    target_h, target_w). ``emphasized`` pretends the image was ``scale`` times larger; it is used
    while t > 999·(1 - adm_scaler_end), ``consistent`` afterwards."""

    emphasized: tuple[float, ...]
    consistent: tuple[float, ...]

    @classmethod
    def for_size(cls, height: int, width: int, scale: float) -> AdmTimeIds:
        """Time ids for a generation of ``height`` x ``width`` pixels with ADM scale ``scale``."""
        target_h, target_w = round_to_64(height), round_to_64(width)
        orig_h, orig_w = int(float(height) * scale), int(float(width) * scale)
        return cls(
            (orig_h, orig_w, 0, 0, target_h, target_w),
            (target_h, target_w, 0, 0, target_h, target_w),
        )

    @classmethod
    def for_refiner(cls, height: int, width: int, aesthetic_score: float) -> AdmTimeIds:
        """The official SDXL refiner's ids (orig_h, orig_w, crop_top, crop_left, aesthetic score):
        the generation size, no crop, and no ADM scaling (§3.3)."""
        ids = (float(height), float(width), 0.0, 0.0, aesthetic_score)
        return cls(ids, ids)

    def pick(self, timestep: float, adm_scaler_end: float) -> tuple[float, ...]:
        """The time ids to use at the UNet's ``timestep`` (an integer one for SDXL's schedule)."""
        return self.emphasized if timestep > 999 * (1.0 - adm_scaler_end) else self.consistent


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return torch.outer(weights, weights)


def joint_bilateral_blur(x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Blur ``x`` [B, C, H, W] with weights from ``guide`` (same shape): 13x13 window, reflect
    padding, Gaussian spatial weight (sigma 3 px) x range weight exp(-d²/(2·3²)) where d is the L1
    distance between guide pixels over channels. Edges in the guide are preserved."""
    pad = BILATERAL_WINDOW // 2
    batch, channels, height, width = x.shape
    # Reflect padding needs the pad to be smaller than the side; tiny latents fall back to edge
    # replication rather than failing.
    mode = "reflect" if min(height, width) > pad else "replicate"
    x_pad = F.pad(x, (pad, pad, pad, pad), mode=mode)
    g_pad = F.pad(guide, (pad, pad, pad, pad), mode=mode)
    window = BILATERAL_WINDOW * BILATERAL_WINDOW
    x_patches = F.unfold(x_pad, BILATERAL_WINDOW).view(batch, channels, window, height * width)
    g_patches = F.unfold(g_pad, BILATERAL_WINDOW).view(batch, channels, window, height * width)
    g_center = guide.reshape(batch, channels, 1, height * width)
    distance = (g_patches - g_center).abs().sum(dim=1, keepdim=True)
    range_weight = torch.exp(-0.5 * distance**2 / BILATERAL_SIGMA_COLOR**2)
    space_weight = _gaussian_window(BILATERAL_WINDOW, BILATERAL_SIGMA_SPACE).to(x)
    weight = range_weight * space_weight.reshape(1, 1, window, 1)
    out = (x_patches * weight).sum(dim=2) / weight.sum(dim=2)
    return out.view(batch, channels, height, width)


def sharpen_eps(
    eps: torch.Tensor, x0: torch.Tensor, sharpness: float, progress: float
) -> torch.Tensor:
    """Fooocus sharpness (§3.1): blend the positive eps with its x0-guided bilateral blur.

    alpha = 0.001 · sharpness · progress; the guide is x0 normalised per sample (unbiased std).
    Blurring eps removes high frequencies from the noise estimate, which CFG then amplifies into
    sharper detail.
    """
    alpha = 0.001 * sharpness * progress
    if alpha == 0.0:
        return eps
    std, mean = torch.std_mean(x0, dim=(1, 2, 3), keepdim=True)
    guide = (x0 - mean) / (std + 1e-5)
    return alpha * joint_bilateral_blur(eps, guide) + (1.0 - alpha) * eps


def combine_cfg(
    eps_pos: torch.Tensor,
    eps_neg: torch.Tensor,
    guidance_scale: float,
    adaptive_cfg: float,
    progress: float,
) -> torch.Tensor:
    """Classifier-free guidance with Fooocus's adaptive CFG (§3.2, "CFG mimicking from TSNR").

    Above the mimic scale, early steps (progress ≈ 0) use the mimic scale and late steps the real
    one, linearly in progress; this avoids the burnt look of high CFG at high noise.
    """
    real = eps_neg + guidance_scale * (eps_pos - eps_neg)
    if guidance_scale <= adaptive_cfg:
        return real
    mimicked = eps_neg + adaptive_cfg * (eps_pos - eps_neg)
    return progress * real + (1.0 - progress) * mimicked


@dataclass(frozen=True)
class UNetCall:
    """One batched UNet call as an add-on sees it (ControlNets, image-prompt attention).

    ``negative`` says for each batch row whether it is the negative (unconditional) side;
    ``progress`` is 1 - t/999, what the time-based stops compare against (§14.6).
    """

    sample: torch.Tensor
    timestep: torch.Tensor
    embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    negative: tuple[bool, ...]
    progress: float


UNetAddOn = Callable[[UNetCall], dict[str, Any]]
"""Called before each UNet forward; returns extra keyword arguments for it (may be empty)."""


class FooocusDenoiser:
    """``denoiser(x, sigma) -> denoised`` around a diffusers SDXL UNet.

    The UNet sees ``schedule.input_scale(sigma)``·x at ``schedule.timestep(sigma)`` (for SDXL:
    x/sqrt(sigma²+1) at the nearest integer timestep; for EDM: c_in·x at 0.25·ln sigma) and
    ``schedule.denoised`` turns its output into x0. ``unet_calls`` counts UNet forwards (for tests
    and speed accounting).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        schedule: NoiseSchedule,
        settings: GuidanceSettings,
        positive: TextConditioning,
        negative: TextConditioning | None,
        positive_adm: AdmTimeIds,
        negative_adm: AdmTimeIds,
        add_ons: Sequence[UNetAddOn] = (),
    ) -> None:
        self.unet = unet
        # diffusers' ``ModelMixin.dtype`` walks every parameter: read it once, not per step
        # (it cost about as much as the rest of the guidance per step on the demo model).
        self.unet_dtype = unet.dtype
        self.add_ons = tuple(add_ons)
        self.schedule = schedule
        self.settings = settings
        self.use_cfg = not math.isclose(settings.guidance_scale, 1.0)
        if self.use_cfg and negative is None:
            raise ValueError("guidance_scale != 1 needs a negative conditioning")
        self.positive = positive
        self.negative = negative
        self.positive_adm = positive_adm
        self.negative_adm = negative_adm
        self.unet_calls = 0
        self.last_progress = 0.0
        # The text side of a UNet call only changes with the ADM switch: build it once per
        # (sides, length) instead of concatenating and copying it to the device every step
        # (the time ids' host-to-device copy would also wait for the GPU each step).
        self._inputs: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The guided x0 estimate of ``x`` [B, 4, h, w] at noise level ``sigma`` (B images whose
        conditionings are stacked in the same order, or one conditioning for all)."""
        timestep = self.schedule.timestep(sigma)
        progress = 1.0 - timestep / 999.0
        self.last_progress = progress
        end = self.settings.adm_scaler_end
        pos_ids = self.positive_adm.pick(timestep, end)
        if not self.use_cfg:
            (eps,) = self._eps(x, sigma, timestep, [(self.positive, pos_ids)])
            return self.schedule.denoised(x, sigma, eps)
        assert self.negative is not None
        neg_ids = self.negative_adm.pick(timestep, end)
        eps_c, eps_u = self._eps(
            x, sigma, timestep, [(self.positive, pos_ids), (self.negative, neg_ids)]
        )
        x0_pos = self.schedule.denoised(x, sigma, eps_c)
        x0_neg = self.schedule.denoised(x, sigma, eps_u)
        # Fooocus combines in "sigma·eps" space of the final x0 estimates (e = x - x0).
        e_pos = sharpen_eps(x - x0_pos, x0_pos, self.settings.sharpness, progress)
        e_neg = x - x0_neg
        e = combine_cfg(
            e_pos, e_neg, self.settings.guidance_scale, self.settings.adaptive_cfg, progress
        )
        return x - e

    def _eps(
        self,
        x: torch.Tensor,
        sigma: float,
        timestep: float,
        sides: list[tuple[TextConditioning, tuple[float, ...]]],
    ) -> list[torch.Tensor]:
        """UNet eps for each (conditioning, time ids) side, batched when lengths allow."""
        lengths = [cond.embeds.shape[1] for cond, _ in sides]
        common = math.lcm(*lengths)
        if common // min(lengths) > MAX_REPEAT_RATIO:
            return [self._unet_eps(x, sigma, timestep, [side])[0] for side in sides]
        return self._unet_eps(x, sigma, timestep, sides, length=common)

    def _unet_eps(
        self,
        x: torch.Tensor,
        sigma: float,
        timestep: float,
        sides: list[tuple[TextConditioning, tuple[float, ...]]],
        length: int | None = None,
    ) -> list[torch.Tensor]:
        dtype = self.unet_dtype
        device = x.device
        count = len(sides)
        rows = x.shape[0]
        target = length or sides[0][0].embeds.shape[1]
        key = (target, device, rows, *((id(cond), ids) for cond, ids in sides))
        cached = self._inputs.get(key)
        if cached is None:
            # Repeating tokens to a common length leaves cross-attention unchanged: every key
            # appears the same number of times, so the softmax weights per distinct key are too.
            # A batch of images has one conditioning row per image on each side.
            embeds = torch.cat(
                [
                    cond.embeds.repeat(1, target // cond.embeds.shape[1], 1).expand(rows, -1, -1)
                    for cond, _ in sides
                ]
            ).to(device=device, dtype=dtype)
            pooled = torch.cat([cond.pooled.expand(rows, -1) for cond, _ in sides])
            pooled = pooled.to(device=device, dtype=dtype)
            id_rows = [list(ids) for _, ids in sides for _ in range(rows)]
            time_ids = torch.tensor(id_rows, dtype=dtype).to(device)
            cached = self._inputs[key] = (embeds, pooled, time_ids)
        embeds, pooled, time_ids = cached
        scaled = (x * self.schedule.input_scale(sigma)).repeat(count, 1, 1, 1).to(dtype)
        t = torch.full((count * rows,), float(timestep), device=device, dtype=torch.float32)
        extra: dict[str, Any] = {}
        if self.add_ons:
            call = UNetCall(
                scaled,
                t,
                embeds,
                pooled,
                time_ids,
                tuple(cond is self.negative for cond, _ in sides for _ in range(rows)),
                1.0 - timestep / 999.0,
            )
            for add_on in self.add_ons:
                extra.update(add_on(call))
        self.unet_calls += 1
        eps = self.unet(
            scaled,
            t,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            **extra,
        ).sample.float()
        return list(eps.chunk(count))
