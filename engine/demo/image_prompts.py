"""Demo stand-ins for the image-prompt models, in the real files' formats.

See :mod:`engine.demo.writer`.

Control-LoRA files with LDM names, ``.up``/``.down`` low-rank factors and full hint-encoder and
zero-convolution weights; a CLIP vision tower with its sidecar config; IP-Adapter Plus ``.bin``
files (``image_proj`` + ``ip_adapter``); Fooocus's negative tokens under ``data``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from engine.image_prompts.controlnet import (
    CONTROL_LORA_MARKER,
    LORA_DOWN,
    LORA_UP,
    controlnet_ldm_names,
)
from engine.image_prompts.ip_adapter import (
    Resampler,
    cross_attention_names,
    write_clip_vision_config,
)
from engine.models.components import SDXLComponents

CONTROL_LORA_RANK = 4
IP_QUERIES = 4
IP_DEPTH = 2
IP_WIDTH = 64
# Weights a Control-LoRA file carries in full rather than as a low-rank delta.
_OWN_WEIGHTS = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """A 2-layer, 32-wide ViT on 32-px images (17 tokens)."""
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )


def control_lora_state(components: SDXLComponents, seed: int) -> dict[str, torch.Tensor]:
    """A random Control-LoRA for ``components``' UNet: rank-4 deltas on every matrix and
    convolution kernel of the encoder, random hint encoder and zero convolutions."""
    with init_empty_weights():
        controlnet = ControlNetModel.from_unet(components.unet, load_weights_from_unet=False)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {CONTROL_LORA_MARKER: torch.zeros(1)}
    names = controlnet_ldm_names(controlnet)
    for name, param in controlnet.state_dict().items():
        ldm = names[name]
        shape = param.shape
        if ldm.startswith(_OWN_WEIGHTS):
            state[ldm] = torch.randn(shape, generator=generator) * 0.1
        elif ldm.endswith(".weight") and len(shape) >= 2:
            module = ldm.removesuffix(".weight")
            kernel = tuple(shape[2:])
            state[module + LORA_DOWN] = (
                torch.randn(CONTROL_LORA_RANK, shape[1], *kernel, generator=generator) * 0.05
            )
            state[module + LORA_UP] = (
                torch.randn(shape[0], CONTROL_LORA_RANK, *(1,) * len(kernel), generator=generator)
                * 0.05
            )
    return state


def write_tiny_control_lora(path: Path, components: SDXLComponents, seed: int) -> None:
    """Write :func:`control_lora_state` to ``path`` (safetensors)."""
    save_file(control_lora_state(components, seed), str(path))


def write_tiny_clip_vision(path: Path, seed: int) -> None:
    """A random tiny CLIP vision tower (transformers key names) at ``path``."""
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(tiny_clip_vision_config())
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def write_tiny_clip_vision_config(folder: Path) -> None:
    """The sidecar config folder of the tiny CLIP vision tower."""
    write_clip_vision_config(tiny_clip_vision_config(), folder)


def write_tiny_ip_adapter(path: Path, components: SDXLComponents, seed: int) -> None:
    """A random IP-Adapter Plus ``.bin`` for ``components``' UNet and the tiny CLIP tower."""
    torch.manual_seed(seed)
    cross_dim = int(components.unet.config.cross_attention_dim)
    resampler = Resampler(
        dim=IP_WIDTH,
        depth=IP_DEPTH,
        queries=IP_QUERIES,
        embedding_dim=tiny_clip_vision_config().hidden_size,
        output_dim=cross_dim,
    )
    torch.nn.init.normal_(resampler.latents, std=0.5)
    layers: dict[str, torch.Tensor] = {}
    for name, number in cross_attention_names(components.unet).items():
        attention = components.unet.get_submodule(name.removesuffix(".processor"))
        inner = attention.to_k.out_features
        layers[f"{number}.to_k_ip.weight"] = torch.randn(inner, cross_dim) * 0.2
        layers[f"{number}.to_v_ip.weight"] = torch.randn(inner, cross_dim) * 0.2
    image_proj = {k: v.detach().contiguous() for k, v in resampler.state_dict().items()}
    torch.save({"image_proj": image_proj, "ip_adapter": layers}, path)


def write_tiny_ip_negative(path: Path, components: SDXLComponents, seed: int) -> None:
    """Random negative tokens [1, 4, cross_attention_dim] under ``data``."""
    generator = torch.Generator().manual_seed(seed)
    width = int(components.unet.config.cross_attention_dim)
    save_file({"data": torch.randn(1, IP_QUERIES, width, generator=generator)}, str(path))
