"""Names of SDXL weights in diffusers form and in the original (SGM/LDM/open_clip) form.

Single-file checkpoints, as Fooocus users have them, use the names of Stability's training code:
``model.diffusion_model.*`` (SGM UNet), ``first_stage_model.*`` (LDM VAE),
``conditioner.embedders.0.transformer.*`` (CLIP-L, Hugging Face names) and
``conditioner.embedders.1.model.*`` (CLIP-G, open_clip names). The rules here are generic over the
UNet/VAE configs (block counts, layers per block), so they hold for real SDXL and for the tiny demo
model alike. The demo writer uses them to save checkpoints; the LoRA merger uses the UNet rules to
resolve LoRA keys written with SGM module names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
# The official SDXL refiner has only CLIP-G, as its first embedder.
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."
# The name some SDXL checkpoints give open_clip's text_projection (read as the same matrix).
TEXT_PROJECTION_LINEAR = "text_projection.weight"
# CLIP vision towers saved by open_clip: every weight under ``visual.``.
OPEN_CLIP_VISUAL_PREFIX = "visual."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def _split(name: str, prefix: str) -> str | None:
    """``rest`` of ``prefix.rest`` (or "" when ``name == prefix``), None when it does not match."""
    if name == prefix:
        return ""
    if name.startswith(prefix + "."):
        return name[len(prefix) + 1 :]
    return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _rename_head(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module of ``rest`` (``conv1.weight`` → ``in_layers.2.weight``)."""
    for old, new in table.items():
        tail = _split(rest, old)
        if tail is not None:
            return _join(new, tail)
    return rest


def _per_block(value: Any, count: int) -> list[int]:
    if isinstance(value, int):
        return [value] * count
    return [int(v) for v in value]


def unet_name_to_sgm(name: str, config: Mapping[str, Any]) -> str:
    """Map a diffusers UNet module or parameter name to its SGM name (without the prefix).

    ``config`` is the UNet's diffusers config. Raises KeyError for names with no SGM equivalent.
    """
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    layers = _per_block(config["layers_per_block"], len(down_types))
    for old, new in _UNET_FIXED.items():
        tail = _split(name, old)
        if tail is not None:
            return _join(new, tail)

    match = re.match(
        r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(.*)", name
    )
    if match:
        kind, block, part, index, tail = match.groups()
        b, j, rest = int(block), int(index), tail.lstrip(".")
        if kind == "down":
            start = 1 + sum(n + 1 for n in layers[:b])
            if part == "downsamplers":
                return _join(
                    f"input_blocks.{start + layers[b]}.0", _rename_head(rest, {"conv": "op"})
                )
            slot = "0" if part == "resnets" else "1"
        else:
            # Up blocks mirror the down blocks and hold one layer more each.
            up_layers = list(reversed(layers))
            start = sum(n + 1 for n in up_layers[:b])
            if part == "upsamplers":
                has_attention = "CrossAttn" in up_types[b]
                slot_index = 2 if has_attention else 1
                return _join(f"output_blocks.{start + up_layers[b]}.{slot_index}", rest)
            slot = "0" if part == "resnets" else "1"
        if part == "resnets":
            rest = _rename_head(rest, _UNET_RESNET)
        base = "input_blocks" if kind == "down" else "output_blocks"
        return _join(f"{base}.{start + j}.{slot}", rest)

    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(.*)", name)
    if match:
        part, index, tail = match.groups()
        rest = tail.lstrip(".")
        if part == "resnets":
            return _join(f"middle_block.{2 * int(index)}", _rename_head(rest, _UNET_RESNET))
        return _join("middle_block.1", rest)
    raise KeyError(name)


def vae_name_to_ldm(name: str, config: Mapping[str, Any]) -> str:
    """Map a diffusers AutoencoderKL parameter name to its LDM name (no ``first_stage_model.``)."""
    levels = len(config["block_out_channels"])
    for side in ("encoder", "decoder"):
        rest = _split(name, side)
        if rest is None:
            continue
        for old, new in _VAE_FIXED.items():
            tail = _split(rest, old)
            if tail is not None:
                return _join(side, new, tail)
        match = re.match(
            r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest
        )
        if match:
            kind, block, part, index, tail = match.groups()
            # LDM numbers decoder levels from the lowest resolution up; diffusers from the top.
            level = int(block) if kind == "down" else levels - 1 - int(block)
            head = f"{side}.{kind}.{level}"
            if part == "resnets":
                return _join(
                    head, f"block.{index}", _rename_head(tail, {"conv_shortcut": "nin_shortcut"})
                )
            return _join(head, "downsample" if kind == "down" else "upsample", tail)
        match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", rest)
        if match:
            part, index, tail = match.groups()
            if part == "resnets":
                return _join(side, f"mid.block_{int(index) + 1}", tail)
            return _join(side, "mid.attn_1", _rename_head(tail, _VAE_ATTENTION))
        return name
    return name  # quant_conv, post_quant_conv


def _is_vae_attention_matrix(name: str) -> bool:
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", name))


def unet_to_original(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict under SGM names, prefixed ``model.diffusion_model.``."""
    return {UNET_PREFIX + unet_name_to_sgm(k, config): v for k, v in state.items()}


def vae_to_original(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict under LDM names (no prefix).

    The mid-block attention's q/k/v/proj_out are 1x1 convolutions in LDM files, so their matrices
    are stored with two trailing unit dimensions, as in real SDXL checkpoints.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _is_vae_attention_matrix(key):
            value = value.reshape(*value.shape, 1, 1)
        out[vae_name_to_ldm(key, config)] = value
    return out


def _open_clip_block_name(head: str, rest: str) -> tuple[str, int | None]:
    """The open_clip name of a Hugging Face encoder layer's parameter ``rest`` in block ``head``.

    The separate q/k/v projections land in one ``attn.in_proj_*`` at chunk 0, 1 or 2.
    """
    proj = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if proj:
        return f"{head}.attn.in_proj_{proj.group(2)}", "qkv".index(proj.group(1))
    return _join(head, _rename_head(rest, _OPEN_CLIP_LAYER)), None


def clip_g_name(key: str) -> tuple[str, int | None]:
    """The open_clip name of a CLIPTextModelWithProjection parameter (no prefix).

    The second value is the q/k/v chunk index (0, 1, 2) inside ``attn.in_proj_*`` for the three
    separate projections of a Hugging Face layer, else None. ``text_projection.weight`` maps to
    ``text_projection``, which open_clip stores transposed. Raises KeyError for unknown names.
    """
    if key == "text_projection.weight":
        return "text_projection", None
    name = key.removeprefix("text_model.")
    if name in _OPEN_CLIP_FIXED:
        return _OPEN_CLIP_FIXED[name], None
    match = re.match(r"encoder\.layers\.(\d+)\.(.*)", name)
    if not match:
        raise KeyError(key)
    layer, rest = match.groups()
    return _open_clip_block_name(f"transformer.resblocks.{layer}", rest)


def clip_g_to_original(
    state: Mapping[str, torch.Tensor], prefix: str = CLIP_G_PREFIX
) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection state dict under open_clip names, with the CLIP-G prefix."""
    out: dict[str, torch.Tensor] = {}
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        name, chunk = clip_g_name(key)
        if chunk is not None:
            chunks.setdefault(name, {})[chunk] = value
        elif name == "text_projection":
            # open_clip multiplies x @ text_projection; a Linear stores the transpose.
            out[name] = value.t().contiguous()
        else:
            out[name] = value
    for name, parts in chunks.items():
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    # Real files carry open_clip's temperature; nothing reads it, but the file should look real.
    out["logit_scale"] = torch.tensor(4.6052)
    return {prefix + k: v for k, v in out.items()}


def clip_l_name(key: str) -> str:
    """The SDXL checkpoint name of a CLIPTextModel parameter (with ``conditioner.embedders.0.``)."""
    # transformers >= 5.6 drops the ``text_model.`` level of CLIPTextModel; files keep it.
    full = key if key.startswith("text_model.") else "text_model." + key
    return CLIP_L_PREFIX + full


def clip_l_to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict under the SDXL checkpoint's CLIP-L names."""
    return {clip_l_name(k): v for k, v in state.items()}


_OPEN_CLIP_VISION_FIXED = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
    "visual_projection.weight": "proj",
}


def clip_vision_open_clip_name(key: str) -> tuple[str, int | None]:
    """The open_clip (``visual.*``) name of a CLIPVisionModelWithProjection parameter.

    As for :func:`clip_g_name`, the second value is the q/k/v chunk of ``attn.in_proj_*``;
    ``visual_projection.weight`` is ``proj`` transposed (open_clip multiplies x @ proj), as
    Fooocus's ``clip_vision.convert_to_transformers`` converts it. KeyError for unknown names.
    """
    if key in _OPEN_CLIP_VISION_FIXED:
        return OPEN_CLIP_VISUAL_PREFIX + _OPEN_CLIP_VISION_FIXED[key], None
    match = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.*)", key)
    if not match:
        raise KeyError(key)
    layer, rest = match.groups()
    return _open_clip_block_name(f"{OPEN_CLIP_VISUAL_PREFIX}transformer.resblocks.{layer}", rest)
