"""The demo model set: tiny random models in the real file formats, so everything runs offline.

The files flow through exactly the loading code real models take: a single-file checkpoint with
the original SGM/LDM/open_clip key names (plus its sidecar config folder, because its
architecture is not SDXL's full size), the same weights as a diffusers folder, kohya-format LoRAs
and a standalone LDM-format VAE. Everything is seeded, so the files are the same on every machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from engine import checkpoint_keys as keys
from engine.components import SDXL_CONFIG_DIR, TINY_VAE_CONFIG, SDXLComponents, build_tiny_sdxl
from engine.lora import LoraTargets

DEMO_CHECKPOINT = "fooocus_demo_tiny.safetensors"
DEMO_DIFFUSERS = "fooocus_demo_tiny_diffusers"
DEMO_VAE = "fooocus_demo_tiny_vae.safetensors"
DEMO_SEED = 20240501

# Stand-ins for the performance LoRAs and the default preset's offset LoRA. Each targets a few
# modules, named in the different ways real files name them: kohya with diffusers module names,
# kohya with SGM module names, a 3x3 convolution, a 1x1 projection and both text encoders.
DEMO_LORAS: dict[str, tuple[str, ...]] = {
    "demo_lcm_lora.safetensors": (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
    ),
    "demo_lightning_4step_lora.safetensors": (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_v",
        "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_out_0",
        "lora_unet_middle_block_1_proj_in",
        "lora_te2_text_model_encoder_layers_1_mlp_fc1",
    ),
    "demo_hyper_sd_4step_lora.safetensors": (
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn1_to_k",
        "lora_unet_output_blocks_3_0_in_layers_2",
        "lora_unet_input_blocks_7_1_proj_out",
        "lora_te1_text_model_encoder_layers_2_mlp_fc2",
    ),
    "demo_offset_lora.safetensors": (
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_1_attn1_to_out_0",
        "lora_unet_up_blocks_0_resnets_1_conv2",
        "lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
    ),
}
LORA_RANK = 4
LORA_ALPHA = 2.0


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` into a temporary sibling and rename it into place (file or folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = tmp / path.name
        write(target)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def original_state_dict(components: SDXLComponents) -> dict[str, torch.Tensor]:
    """All weights of ``components`` under the key names of a Stability single-file checkpoint."""
    state: dict[str, torch.Tensor] = {}
    state.update(keys.unet_to_original(components.unet.state_dict(), components.unet.config))
    vae = keys.vae_to_original(components.vae.state_dict(), components.vae.config)
    state.update({keys.VAE_PREFIX + k: v for k, v in vae.items()})
    state.update(keys.clip_l_to_original(components.text_encoder.state_dict()))
    state.update(keys.clip_g_to_original(components.text_encoder_2.state_dict()))
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_config_folder(components: SDXLComponents, folder: Path) -> None:
    """Write the diffusers-format configs and tokenizers (no weights) of ``components``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SDXL_CONFIG_DIR / "model_index.json", folder / "model_index.json")
    for part in ("scheduler", "tokenizer", "tokenizer_2"):
        shutil.copytree(SDXL_CONFIG_DIR / part, folder / part, dirs_exist_ok=True)
    components.unet.save_config(folder / "unet")
    components.vae.save_config(folder / "vae")
    components.text_encoder.config.save_pretrained(folder / "text_encoder")
    components.text_encoder_2.config.save_pretrained(folder / "text_encoder_2")


def write_diffusers_folder(components: SDXLComponents, folder: Path) -> None:
    """Save ``components`` as a diffusers-format SDXL folder (configs, tokenizers, weights)."""
    write_config_folder(components, folder)
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.text_encoder_2.save_pretrained(folder / "text_encoder_2")


def _lora_state(
    components: SDXLComponents, names: tuple[str, ...], seed: int
) -> dict[str, torch.Tensor]:
    """Random rank-``LORA_RANK`` kohya factors for the named modules, shaped to fit them."""
    targets = LoraTargets(components)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in names:
        weight = targets.weight(*targets.lookup(name))
        out_features, in_features = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        down = torch.randn(LORA_RANK, in_features, *kernel, generator=generator) * 0.2
        up = torch.randn(out_features, LORA_RANK, *(1,) * len(kernel), generator=generator) * 0.2
        state[f"{name}.lora_down.weight"] = down
        state[f"{name}.lora_up.weight"] = up
        state[f"{name}.alpha"] = torch.tensor(LORA_ALPHA)
    return state


def _saver(state: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    return lambda path: save_file(state, str(path))


def _demo_vae_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(DEMO_SEED + 1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    ldm = keys.vae_to_original(vae.state_dict(), vae.config)
    return {k: v.detach().contiguous() for k, v in ldm.items()}


def create_demo_models(models_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write the demo model set under ``models_dir`` and return the paths of its files.

    Files that already exist are kept unless ``overwrite``; every file is written to a temporary
    name first and renamed, so a crash never leaves half a model behind. Deterministic: the same
    bytes on every run.
    """
    checkpoints = models_dir / "checkpoints"
    stem = DEMO_CHECKPOINT.removesuffix(".safetensors")
    paths = {
        "checkpoint": checkpoints / DEMO_CHECKPOINT,
        "sidecar": checkpoints / (stem + ".config"),
        "diffusers": checkpoints / DEMO_DIFFUSERS,
        "vae": models_dir / "vae" / DEMO_VAE,
    }
    lora_paths = [models_dir / "loras" / name for name in DEMO_LORAS]
    todo = [p for p in (*paths.values(), *lora_paths) if overwrite or not p.exists()]
    # fork_rng: the seeding below must not change the caller's random stream.
    if todo:
        with torch.random.fork_rng(devices=[]):
            _write(models_dir, paths, todo)
    return [*paths.values(), *lora_paths]


def _write(models_dir: Path, paths: dict[str, Path], todo: list[Path]) -> None:
    """Write the ``todo`` files of the demo set (``paths`` names the non-LoRA ones)."""
    components = build_tiny_sdxl(seed=DEMO_SEED, name=DEMO_CHECKPOINT)
    writers: dict[Path, Callable[[Path], None]] = {
        paths["checkpoint"]: lambda p: save_file(original_state_dict(components), str(p)),
        paths["sidecar"]: lambda p: write_config_folder(components, p),
        paths["diffusers"]: lambda p: write_diffusers_folder(components, p),
        paths["vae"]: lambda p: save_file(_demo_vae_state(), str(p)),
    }
    for index, (name, modules) in enumerate(DEMO_LORAS.items()):
        state = _lora_state(components, modules, DEMO_SEED + 10 + index)
        writers[models_dir / "loras" / name] = _saver(state)
    for path in todo:
        _atomic(path, writers[path])
