"""IP-Adapter Plus (ImagePrompt, FaceSwap): CLIP ViT-H image features → extra attention tokens.

The CLIP vision tower's penultimate hidden states go through the adapter's Resampler (a small
perceiver: learned queries attend to the image features) and come out as a few tokens in the
text-embedding space. Every cross-attention layer projects them with the adapter's own
``to_k_ip``/``to_v_ip`` and attends over ``[text ; image tokens]`` in one softmax (Fooocus's
formulation, §9), with each prompt's tokens scaled by its weight. The negative side uses
Fooocus's stored negative tokens instead of encoding a blank image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from engine.guidance import UNetCall
from engine.image_prompts.preprocessors import clip_input
from engine.models import checkpoint_keys as keys
from engine.models.components import CONFIG_DIR
from engine.models.loading import (
    CheckpointFormatError,
    fill_module,
    open_weights,
    sidecar_config_dir,
)

CLIP_VISION_CONFIG_DIR = CONFIG_DIR / "clip_vision_vit_h"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 64
REFERENCE_WIDTH = 1280.0  # the layer width at which a weight is taken as given (§9)


class ImageEncoder:
    """The CLIP vision tower: an RGB image → penultimate hidden states [1, tokens, hidden]."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        config_dir = sidecar_config_dir(path) or CLIP_VISION_CONFIG_DIR
        config = CLIPVisionConfig.from_pretrained(config_dir)
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
        hidden = int(config.hidden_size)
        with open_weights(path) as source:
            open_clip = any(n.startswith(keys.OPEN_CLIP_VISUAL_PREFIX) for n in source.names)

            def fetch(name: str) -> torch.Tensor:
                if not open_clip:
                    if name not in source:
                        raise KeyError(name)
                    return source[name]
                # open_clip layout (``visual.*``), converted as Fooocus converts it.
                original, chunk = keys.clip_vision_open_clip_name(name)
                if original not in source:
                    raise KeyError(original)
                tensor = source[original]
                if chunk is not None:
                    return tensor[chunk * hidden : (chunk + 1) * hidden]
                return tensor.t() if name == "visual_projection.weight" else tensor

            fill_module(model, fetch, dtype, path.name)
        self.model: Any = model.to(device)  # type: ignore[arg-type]
        self.size = int(config.image_size)  # type: ignore[arg-type]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Penultimate hidden states of ``image`` stretched to the tower's input size."""
        array = np.asarray(clip_input(image, self.size), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)[None]
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).to(device=self.model.device, dtype=self.model.dtype)
        output = self.model(pixel_values=pixels, output_hidden_states=True)
        return output.hidden_states[-2]


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * HEAD_DIM, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * HEAD_DIM, bias=False)
        self.to_out = nn.Linear(heads * HEAD_DIM, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        # The queries see the image features and themselves.
        keys_values = self.to_kv(torch.cat([features, latents], dim=1))
        batch = latents.shape[0]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, HEAD_DIM).transpose(1, 2)

        key, value = keys_values.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(split(self.to_q(latents)), split(key), split(value))
        return self.to_out(out.transpose(1, 2).reshape(batch, -1, self.heads * HEAD_DIM))


class Resampler(nn.Module):
    """IP-Adapter Plus's image projection: learned queries → tokens of width ``output_dim``."""

    def __init__(
        self, dim: int, depth: int, queries: int, embedding_dim: int, output_dim: int
    ) -> None:
        super().__init__()
        heads = max(1, dim // HEAD_DIM)
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _PerceiverAttention(dim, heads),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, 4 * dim, bias=False),
                        nn.GELU(),
                        nn.Linear(4 * dim, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Resampler:
        """A Resampler shaped by (and loaded with) an ``image_proj`` state dict."""
        latents = state["latents"]
        depth = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        model = cls(
            dim=latents.shape[2],
            depth=depth,
            queries=latents.shape[1],
            embedding_dim=state["proj_in.weight"].shape[1],
            output_dim=state["proj_out.weight"].shape[0],
        )
        model.load_state_dict(dict(state), strict=True)
        return model.eval().requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(features.shape[0], 1, 1)
        features = self.proj_in(features)
        for layer in self.layers:
            attention: Any = layer[0]  # type: ignore[index]
            feed_forward: Any = layer[1]  # type: ignore[index]
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


def cross_attention_names(unet: UNet2DConditionModel) -> dict[str, int]:
    """Processor name of each cross-attention layer -> its number in IP-Adapter files.

    The files number every attention processor of the UNet in diffusers' order (self- and
    cross-attention alternate), so the cross-attention layers are the odd numbers.
    """
    return {
        name: index
        for index, name in enumerate(unet.attn_processors)
        if name.endswith("attn2.processor")
    }


@dataclass
class IpAdapterModel:
    """One IP-Adapter file: the Resampler and each cross-attention layer's (to_k_ip, to_v_ip)."""

    resampler: Resampler
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def load(cls, path: Path) -> IpAdapterModel:
        """Read a ``.bin`` (``{"image_proj": ..., "ip_adapter": ...}``) or flat ``.safetensors``."""
        if path.suffix == ".safetensors":
            flat = load_file(str(path))
            data: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for key, value in flat.items():
                part, _, rest = key.partition(".")
                data.setdefault(part, {})[rest] = value
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, Mapping) or "image_proj" not in data or "ip_adapter" not in data:
            raise CheckpointFormatError(f"{path.name} is not an IP-Adapter file")
        if "latents" not in data["image_proj"]:
            raise CheckpointFormatError(f"{path.name} is not an IP-Adapter Plus file")
        layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, value in data["ip_adapter"].items():
            number, _, name = key.partition(".")
            if name == "to_k_ip.weight":
                layers[int(number)] = (value, data["ip_adapter"][f"{number}.to_v_ip.weight"])
        return cls(Resampler.from_state_dict(data["image_proj"]), layers)

    def check_fits(self, unet: UNet2DConditionModel) -> None:
        """Raise CheckpointFormatError unless every cross-attention layer has its projections."""
        wanted = set(cross_attention_names(unet).values())
        if set(self.layers) != wanted:
            raise CheckpointFormatError("the IP-Adapter file does not fit this model's UNet")


def load_negative(path: Path) -> torch.Tensor:
    """Fooocus's stored negative image-prompt tokens [1, tokens, width] (key ``data``)."""
    data = load_file(str(path))
    if "data" not in data or data["data"].dim() != 3:
        raise CheckpointFormatError(f"{path.name} holds no negative tokens")
    return data["data"]


@dataclass
class PromptTokens:
    """One image prompt's tokens [1, n, width] for both sides, and its weight and stop."""

    positive: torch.Tensor
    negative: torch.Tensor
    weight: float
    stop: float
    adapter: IpAdapterModel


@dataclass
class _LayerTokens:
    """Per prompt: (K, V) for the positive and the negative side, weights already applied."""

    keys_values: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def _weighted(
    tokens: torch.Tensor, to_k: torch.Tensor, to_v: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    key = tokens @ to_k.t().to(tokens)
    value = tokens @ to_v.t().to(tokens)
    # Narrow layers get proportionally less image influence; the weight scales the keys and
    # only the mean of the values, so the tokens' variation is kept.
    scaled = weight * key.shape[-1] / REFERENCE_WIDTH
    mean = value.mean(dim=1, keepdim=True)
    return key * scaled, value - mean + mean * scaled


class ImagePromptAttention:
    """A diffusers attention processor: the layer's own attention with image tokens appended."""

    def __init__(self, original: Any, tokens: _LayerTokens, state: ImagePromptAddOn) -> None:
        self.original = original
        self.tokens = tokens
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        active = self.state.active
        if not active or encoder_hidden_states is None or attention_mask is not None:
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        batch = hidden_states.shape[0]
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        extra_k, extra_v = [], []
        for negative in self.state.negative:
            side = 2 if negative else 0
            rows = [self.tokens.keys_values[i] for i in active]
            extra_k.append(torch.cat([r[side] for r in rows], dim=1))
            extra_v.append(torch.cat([r[side + 1] for r in rows], dim=1))
        key = torch.cat([key, torch.cat(extra_k).to(key)], dim=1)
        value = torch.cat([value, torch.cat(extra_v).to(value)], dim=1)
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class ImagePromptAddOn:
    """Switches the image prompts on and off per UNet call (a :data:`UNetAddOn`).

    A prompt is active while progress < its stop. ``applied`` counts calls with any active.
    """

    prompts: list[PromptTokens]
    active: list[int] = field(default_factory=list)
    negative: tuple[bool, ...] = ()
    applied: int = 0

    def __call__(self, call: UNetCall) -> dict[str, Any]:
        self.active = [i for i, p in enumerate(self.prompts) if call.progress < p.stop]
        self.negative = call.negative
        if self.active:
            self.applied += 1
        return {}

    @contextmanager
    def installed(self, unet: UNet2DConditionModel) -> Iterator[None]:
        """Put the image-prompt processors on ``unet``'s cross-attention layers meanwhile."""
        saved = dict(unet.attn_processors)
        numbers = cross_attention_names(unet)
        processors: dict[str, Any] = dict(saved)
        for name, number in numbers.items():
            rows = []
            for prompt in self.prompts:
                to_k, to_v = prompt.adapter.layers[number]
                pos = _weighted(prompt.positive, to_k, to_v, prompt.weight)
                neg = _weighted(prompt.negative, to_k, to_v, prompt.weight)
                rows.append((*pos, *neg))
            processors[name] = ImagePromptAttention(saved[name], _LayerTokens(rows), self)
        unet.set_attn_processor(processors)
        try:
            yield
        finally:
            unet.set_attn_processor(saved)
            self.active = []


def write_clip_vision_config(config: CLIPVisionConfig, folder: Path) -> None:
    """Save ``config`` as a ``config.json`` in ``folder`` (for sidecar config folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
