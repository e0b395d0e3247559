"""Control-LoRA ControlNets (PyraCanny, CPDS) and how their residuals enter the UNet (§9, §3.6).

A Control-LoRA file (Stability's format; Fooocus's CPDS file uses it too) does not hold a whole
ControlNet: the ControlNet starts as a copy of the base UNet's encoder, and the file adds
low-rank deltas (``<module>.up`` @ ``<module>.down``) to its big weights and replaces the rest
(hint encoder, zero convolutions, norms, biases) outright. Names in the file are LDM names
(``input_blocks.4.1.proj_in``), with ``lora_controlnet`` as the format marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file

from engine.guidance import UNetCall
from engine.models import checkpoint_keys as keys
from engine.models.loading import CheckpointFormatError

CONTROL_LORA_MARKER = "lora_controlnet"
LORA_UP, LORA_DOWN = ".up", ".down"


def controlnet_ldm_names(controlnet: ControlNetModel) -> dict[str, str]:
    """diffusers parameter name of ``controlnet`` -> its LDM (ControlNet-file) name."""
    config: dict[str, Any] = {**controlnet.config, "up_block_types": ()}
    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    names: dict[str, str] = {}
    for name in controlnet.state_dict():
        module, _, param = name.rpartition(".")
        parts = module.split(".")
        if parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                index = 0
            elif parts[1] == "blocks":
                index = 2 * (int(parts[2]) + 1)
            else:  # conv_out
                index = 2 * (hint_blocks + 1)
            names[name] = f"input_hint_block.{index}.{param}"
        elif parts[0] == "controlnet_down_blocks":
            names[name] = f"zero_convs.{parts[1]}.0.{param}"
        elif parts[0] == "controlnet_mid_block":
            names[name] = f"middle_block_out.0.{param}"
        else:
            names[name] = keys.unet_name_to_sgm(name, config)
    return names


def _low_rank(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return (up.flatten(1).float() @ down.flatten(1).float()).reshape(shape)


def build_control_lora(
    unet: UNet2DConditionModel, weights: dict[str, torch.Tensor]
) -> ControlNetModel:
    """A ControlNet made of ``unet``'s encoder (its current weights, LoRAs included) plus the
    Control-LoRA ``weights``; on the UNet's device and dtype, in eval mode."""
    if CONTROL_LORA_MARKER not in weights:
        raise CheckpointFormatError("not a Control-LoRA file (no 'lora_controlnet' marker)")
    with init_empty_weights():
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    names = controlnet_ldm_names(controlnet)
    unet_state = unet.state_dict()
    used = {CONTROL_LORA_MARKER}
    state: dict[str, torch.Tensor] = {}
    for name, expected in controlnet.state_dict().items():
        ldm = names[name]
        module = ldm.rpartition(".")[0]
        if ldm in weights:
            base = weights[ldm].float()
            used.add(ldm)
        elif name in unet_state:
            base = unet_state[name].float()
        else:
            raise CheckpointFormatError(f"the Control-LoRA file has no weight for {ldm}")
        if ldm.endswith(".weight") and module + LORA_UP in weights:
            up, down = weights[module + LORA_UP], weights[module + LORA_DOWN]
            base = base.reshape(expected.shape) + _low_rank(up, down, expected.shape)
            used.update((module + LORA_UP, module + LORA_DOWN))
        if base.numel() != expected.numel():
            raise CheckpointFormatError(
                f"{ldm} has shape {tuple(base.shape)}, the ControlNet needs {tuple(expected.shape)}"
            )
        state[name] = base.reshape(expected.shape).to(device=unet.device, dtype=unet.dtype)
    unknown = sorted(set(weights) - used)
    if unknown:
        raise CheckpointFormatError(
            f"the Control-LoRA file does not fit this model: {len(unknown)} unknown weights "
            f"({', '.join(unknown[:3])} ...)"
        )
    controlnet.load_state_dict(state, strict=True, assign=True)
    return controlnet.eval().requires_grad_(False)


def load_control_lora(path: Path, unet: UNet2DConditionModel) -> ControlNetModel:
    """Read the Control-LoRA file at ``path`` and build its ControlNet on ``unet``."""
    try:
        weights = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointFormatError(f"cannot read {path.name}: {exc}") from exc
    try:
        return build_control_lora(unet, weights)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path.name}: {exc}") from exc


def softness_factors(count: int, softness: float) -> list[float]:
    """Scale of each of ``count`` residuals, highest resolution first and the middle block's
    last: 1 - softness·(1 - i/(count - 1)) (§3.6)."""
    last = max(count - 1, 1)
    return [1.0 - softness * (1.0 - i / last) for i in range(count)]


@dataclass
class ControlUnit:
    """One ControlNet slot: the model, its hint image [1, 3, H, W] in 0..1, weight and stop."""

    model: ControlNetModel
    hint: torch.Tensor
    weight: float
    stop: float


@dataclass
class ControlNetAddOn:
    """Adds the active ControlNets' residuals to each UNet call (a :data:`UNetAddOn`).

    A unit is active while progress < its stop. ``applied`` records the progress of every call
    that got residuals (tests count them).
    """

    units: list[ControlUnit]
    softness: float
    applied: list[float] = field(default_factory=list)

    def __call__(self, call: UNetCall) -> dict[str, Any]:
        active = [u for u in self.units if call.progress < u.stop]
        if not active:
            return {}
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        batch = call.sample.shape[0]
        for unit in active:
            hint = unit.hint.to(device=call.sample.device, dtype=unit.model.dtype)
            down, mid = unit.model(
                call.sample.to(unit.model.dtype),
                call.timestep,
                encoder_hidden_states=call.embeds,
                controlnet_cond=hint.repeat(batch, 1, 1, 1),
                conditioning_scale=unit.weight,
                added_cond_kwargs={"text_embeds": call.pooled, "time_ids": call.time_ids},
                return_dict=False,
            )
            factors = softness_factors(len(down) + 1, self.softness)
            scaled = [d * f for d, f in zip(down, factors, strict=False)]
            mid = mid * factors[-1]
            if down_total is None or mid_total is None:
                down_total, mid_total = scaled, mid
            else:
                down_total = [a + b for a, b in zip(down_total, scaled, strict=True)]
                mid_total = mid_total + mid
        self.applied.append(call.progress)
        return {
            "down_block_additional_residuals": tuple(down_total or ()),
            "mid_block_additional_residual": mid_total,
        }
