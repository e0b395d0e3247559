"""The loaded parts of one SDXL-architecture model, and a tiny random one for tests and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SDXL_CONFIG_DIR = CONFIG_DIR / "sdxl_base"
REFINER_CONFIG_DIR = CONFIG_DIR / "sdxl_refiner"


@dataclass
class SDXLComponents:
    """The modules one SDXL checkpoint provides; ``name`` is its file or folder name.

    The official SDXL refiner has no CLIP-L (``text_encoder`` is None): its UNet takes CLIP-G
    tokens only and an aesthetic score in place of the target size (:attr:`clip_g_only`).
    """

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer

    @property
    def clip_g_only(self) -> bool:
        """True for the official SDXL refiner's design (CLIP-G conditioning, aesthetic ADM)."""
        return self.text_encoder is None

    @property
    def native_size(self) -> int:
        """The model's native image side in pixels (1024 for SDXL, 64 for the demo model)."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * scale


# The tiny model keeps SDXL's structure (three UNet levels, attention on levels 2 and 3,
# two text encoders whose hidden states are concatenated, the text_time size conditioning and an
# 8x VAE) with very few channels, so every code path runs on a CPU in milliseconds.
TINY_UNET_CONFIG: dict[str, object] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 2),
    "attention_head_dim": (2, 4, 4),
    "cross_attention_dim": 64,
    "norm_num_groups": 32,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}
TINY_VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (32, 32, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}


# The official SDXL refiner's shape in miniature: four levels, attention on the middle two,
# CLIP-G-wide cross-attention and five ADM numbers (size, crop, aesthetic score).
TINY_REFINER_UNET_CONFIG: dict[str, object] = {
    **TINY_UNET_CONFIG,
    "down_block_types": (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 64, 64),
    "transformer_layers_per_block": 1,
    "attention_head_dim": (2, 4, 4, 4),
    "cross_attention_dim": 32,
    "projection_class_embeddings_input_dim": 32 + 5 * 8,
}


def _tiny_text_config(hidden_act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def build_tiny_sdxl(seed: int = 0, name: str = "tiny") -> SDXLComponents:
    """Build a randomly initialised SDXL-architecture model with the real CLIP tokenizers.

    Deterministic for a given ``seed``. Used by the tests and by the demo model set.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    text_encoder = CLIPTextModel(_tiny_text_config("quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config("gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2")
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    return SDXLComponents(name, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2)


def build_tiny_refiner(seed: int = 1, name: str = "tiny_refiner") -> SDXLComponents:
    """A random model of the official SDXL refiner's architecture, sized to refine the tiny base.

    Its cross-attention width is the tiny CLIP-G's (32); it has no CLIP-L.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_REFINER_UNET_CONFIG)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config("gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2")
    for module in (unet, vae, text_encoder_2):
        module.eval().requires_grad_(False)
    return SDXLComponents(name, unet, vae, None, text_encoder_2, tokenizer, tokenizer_2)
