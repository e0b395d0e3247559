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
from functools import partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import CLIPConfig, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from engine.config import (
    CLIP_VISION_FILE,
    CLIP_VISION_FOLDER,
    CONTROL_LORA_FILES,
    CONTROLNET_FOLDER,
    EXPANSION_FOLDER,
    INPAINT_FOLDER,
    INPAINT_HEAD_FILE,
    INPAINT_PATCH_FILES,
    IP_ADAPTER_FILES,
    IP_NEGATIVE_FILE,
    SAFETY_FILE,
    SAFETY_FOLDER,
    SIDECAR_SUFFIX,
    UPSCALER_FILE,
    UPSCALER_FOLDER,
)
from engine.demo.image_prompts import (
    write_tiny_clip_vision,
    write_tiny_clip_vision_config,
    write_tiny_control_lora,
    write_tiny_ip_adapter,
    write_tiny_ip_negative,
)
from engine.demo.tools import tool_writers
from engine.models import checkpoint_keys as keys
from engine.models.components import (
    SDXL_CONFIG_DIR,
    TINY_VAE_CONFIG,
    SDXLComponents,
    build_tiny_refiner,
    build_tiny_sdxl,
)
from engine.models.lora import LoraTargets
from engine.prompts.embeddings import EMBEDDINGS_FOLDER

DEMO_CHECKPOINT = "fooocus_demo_tiny.safetensors"
DEMO_DIFFUSERS = "fooocus_demo_tiny_diffusers"
DEMO_VAE = "fooocus_demo_tiny_vae.safetensors"
DEMO_EMBEDDING = "fooocus_demo_embedding.safetensors"
DEMO_REFINER = "fooocus_demo_tiny_refiner.safetensors"
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
# Weights the demo inpaint patches touch (LDM names).
DEMO_PATCH_PARTS: tuple[str, ...] = (
    "input_blocks.0.0.",
    "attn2.to_k",
    "middle_block.0.in_layers.2",
    "out.2.",
)
LORA_RANK = 4
LORA_ALPHA = 2.0

# The demo expansion's word list (our own choice of common image-prompt words).
DEMO_EXPANSION_WORDS: tuple[str, ...] = (
    "detailed",
    "cinematic",
    "sharp",
    "focus",
    "elegant",
    "light",
    "color",
    "dramatic",
    "beautiful",
    "intricate",
    "vivid",
    "soft",
    "glowing",
    "highly",
    "atmosphere",
    "composition",
    "perfect",
    "stunning",
    "warm",
    "calm",
)
END_OF_TEXT = "<|endoftext|>"


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
    if components.text_encoder is None:  # the official refiner: CLIP-G as embedder 0
        te2 = components.text_encoder_2.state_dict()
        state.update(keys.clip_g_to_original(te2, keys.REFINER_CLIP_G_PREFIX))
    else:
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
    if components.text_encoder is not None:
        components.text_encoder.config.save_pretrained(folder / "text_encoder")
    components.text_encoder_2.config.save_pretrained(folder / "text_encoder_2")


def write_diffusers_folder(components: SDXLComponents, folder: Path) -> None:
    """Save ``components`` as a diffusers-format SDXL folder (configs, tokenizers, weights)."""
    write_config_folder(components, folder)
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    assert components.text_encoder is not None, "the diffusers folder layout needs CLIP-L"
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


def write_tiny_expansion(folder: Path, words: tuple[str, ...] = DEMO_EXPANSION_WORDS) -> None:
    """Write a tiny random GPT-2 expansion model folder (the layout of Fooocus's) to ``folder``.

    The byte-level BPE tokenizer is built here, offline: the 256 byte symbols plus one merge chain
    per word (``Ġd``, ``Ġde``, ... ``Ġdetailed``), so each word of ``positive.txt`` is one token
    after a space, as in GPT-2's vocabulary. The weights go to ``pytorch_model.bin`` like the real
    download.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {END_OF_TEXT: 0}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        current = "Ġ"
        for char in word:
            joined = current + char
            if joined not in vocab:
                merges.append((current, char))
                vocab[joined] = len(vocab)
            current = joined
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = GPT2Tokenizer(
        tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(DEMO_SEED + 2)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "positive.txt").write_text("\n".join(words) + "\n", encoding="utf-8")


def write_tiny_embedding(
    path: Path, seed: int, length: int = 2, widths: tuple[int, int] = (32, 32)
) -> None:
    """A random SDXL textual-inversion file: ``clip_l`` [length, w_l] and ``clip_g`` [length, w_g]
    (the demo encoders are 32 wide; the real ones 768 and 1280)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(length, width, generator=generator) * 0.5
        for key, width in zip(("clip_l", "clip_g"), widths, strict=True)
    }
    save_file(state, str(path))


def tiny_safety_config() -> CLIPConfig:
    """A CLIP config small enough for a CPU: a 2-layer, 32-wide vision tower on 32-px images."""
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    return CLIPConfig(
        vision_config={**tiny, "num_attention_heads": 2, "patch_size": 8, "image_size": 32},
        text_config={**tiny, "num_attention_heads": 2},
        projection_dim=16,
    )


def write_tiny_safety_checker(path: Path) -> None:
    """A random safety checker state dict at ``path`` (its config is the sidecar folder written
    from :func:`tiny_safety_config`).

    Its concept thresholds stay at the class's initial 1.0, which no cosine similarity exceeds,
    so the demo checker never flags an image.
    """
    torch.manual_seed(DEMO_SEED + 3)
    checker = StableDiffusionSafetyChecker(tiny_safety_config())
    torch.save({k: v.contiguous() for k, v in checker.state_dict().items()}, path)


def write_tiny_upscaler(path: Path) -> None:
    """A random 4x ESRGAN (RRDBNet, 8 filters, one block) pickled like Fooocus's upscaler file:
    old-architecture keys with ``residual_block_`` where ESRGAN says ``RDB``."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(DEMO_SEED + 4)
    model = ESRGAN(num_filters=8, num_blocks=1, scale=4)
    state = {
        key.replace("RDB", "residual_block_"): value.detach().contiguous()
        for key, value in model.state_dict().items()
    }
    torch.save(state, path)


def write_tiny_inpaint_head(path: Path) -> None:
    """A random inpaint head ``{"head": [32, 5, 3, 3]}`` for the demo UNet's 32-channel conv_in."""
    torch.manual_seed(DEMO_SEED + 5)
    torch.save({"head": torch.randn(32, 5, 3, 3) * 0.05}, path)


def write_tiny_inpaint_patch(path: Path, seed: int) -> None:
    """A random inpaint patch in Fooocus's layout: LDM UNet weight name -> (uint8, min, max),
    for the first convolution and a few attention and resnet weights of the demo UNet."""
    components = build_tiny_sdxl(seed=DEMO_SEED, name=DEMO_CHECKPOINT)
    original = keys.unet_to_original(components.unet.state_dict(), components.unet.config)
    chosen = [
        name
        for name in original
        if name.endswith(".weight") and any(part in name for part in DEMO_PATCH_PARTS)
    ]
    generator = torch.Generator().manual_seed(seed)
    patch: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for name in chosen:
        shape = original[name].shape
        quantised = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        patch[name.removeprefix("model.")] = (quantised, torch.tensor(-0.02), torch.tensor(0.02))
    torch.save(patch, path)


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
        "refiner": checkpoints / DEMO_REFINER,
        "refiner_sidecar": checkpoints
        / (DEMO_REFINER.removesuffix(".safetensors") + SIDECAR_SUFFIX),
        "vae": models_dir / "vae" / DEMO_VAE,
        "embedding": models_dir / EMBEDDINGS_FOLDER / DEMO_EMBEDDING,
        "expansion": models_dir / EXPANSION_FOLDER,
        "safety": models_dir / SAFETY_FOLDER / SAFETY_FILE,
        "safety_config": models_dir / SAFETY_FOLDER / (Path(SAFETY_FILE).stem + SIDECAR_SUFFIX),
        "upscaler": models_dir / UPSCALER_FOLDER / UPSCALER_FILE,
        "inpaint_head": models_dir / INPAINT_FOLDER / INPAINT_HEAD_FILE,
        **{
            f"inpaint_{version}": models_dir / INPAINT_FOLDER / name
            for version, name in INPAINT_PATCH_FILES.items()
        },
        **{
            f"controlnet_{cn_type}": models_dir / CONTROLNET_FOLDER / name
            for cn_type, name in {**CONTROL_LORA_FILES, **IP_ADAPTER_FILES}.items()
        },
        "ip_negative": models_dir / CONTROLNET_FOLDER / IP_NEGATIVE_FILE,
        "clip_vision": models_dir / CLIP_VISION_FOLDER / CLIP_VISION_FILE,
        "clip_vision_config": models_dir
        / CLIP_VISION_FOLDER
        / (Path(CLIP_VISION_FILE).stem + SIDECAR_SUFFIX),
    }
    lora_paths = [models_dir / "loras" / name for name in DEMO_LORAS]
    tools = tool_writers(models_dir)
    todo = [p for p in (*paths.values(), *lora_paths) if overwrite or not p.exists()]
    # fork_rng: the seeding below must not change the caller's random stream.
    if todo:
        with torch.random.fork_rng(devices=[]):
            _write(models_dir, paths, todo)
    for path, write in tools.items():
        if overwrite or not path.exists():
            with torch.random.fork_rng(devices=[]):
                _atomic(path, write)
    return [*paths.values(), *lora_paths, *tools]


def _write(models_dir: Path, paths: dict[str, Path], todo: list[Path]) -> None:
    """Write the ``todo`` files of the demo set (``paths`` names the non-LoRA ones)."""
    components = build_tiny_sdxl(seed=DEMO_SEED, name=DEMO_CHECKPOINT)
    refiner = build_tiny_refiner(seed=DEMO_SEED + 7, name=DEMO_REFINER)
    writers: dict[Path, Callable[[Path], None]] = {
        paths["checkpoint"]: lambda p: save_file(original_state_dict(components), str(p)),
        paths["sidecar"]: lambda p: write_config_folder(components, p),
        paths["diffusers"]: lambda p: write_diffusers_folder(components, p),
        paths["vae"]: lambda p: save_file(_demo_vae_state(), str(p)),
        paths["refiner"]: lambda p: save_file(original_state_dict(refiner), str(p)),
        paths["refiner_sidecar"]: lambda p: write_config_folder(refiner, p),
        paths["embedding"]: partial(write_tiny_embedding, seed=DEMO_SEED + 6),
        paths["expansion"]: write_tiny_expansion,
        paths["safety"]: write_tiny_safety_checker,
        paths["safety_config"]: lambda p: tiny_safety_config().save_pretrained(p),
        paths["upscaler"]: write_tiny_upscaler,
        paths["inpaint_head"]: write_tiny_inpaint_head,
    }
    for index, version in enumerate(INPAINT_PATCH_FILES):
        writers[paths[f"inpaint_{version}"]] = partial(
            write_tiny_inpaint_patch, seed=DEMO_SEED + 20 + index
        )
    for index, cn_type in enumerate(CONTROL_LORA_FILES):
        writers[paths[f"controlnet_{cn_type}"]] = partial(
            write_tiny_control_lora, components=components, seed=DEMO_SEED + 30 + index
        )
    for index, cn_type in enumerate(IP_ADAPTER_FILES):
        writers[paths[f"controlnet_{cn_type}"]] = partial(
            write_tiny_ip_adapter, components=components, seed=DEMO_SEED + 40 + index
        )
    writers[paths["ip_negative"]] = partial(
        write_tiny_ip_negative, components=components, seed=DEMO_SEED + 50
    )
    writers[paths["clip_vision"]] = partial(write_tiny_clip_vision, seed=DEMO_SEED + 51)
    writers[paths["clip_vision_config"]] = write_tiny_clip_vision_config
    for index, (name, modules) in enumerate(DEMO_LORAS.items()):
        state = _lora_state(components, modules, DEMO_SEED + 10 + index)
        writers[models_dir / "loras" / name] = _saver(state)
    for path in todo:
        _atomic(path, writers[path])
