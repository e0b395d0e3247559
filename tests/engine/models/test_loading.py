"""ModelManager: listing, loading single files and folders identically, caching, VAEs, key names."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from engine.config import EngineConfig
from engine.demo.writer import (
    DEMO_CHECKPOINT,
    DEMO_DIFFUSERS,
    DEMO_EMBEDDING,
    DEMO_REFINER,
    DEMO_SEED,
    DEMO_VAE,
    original_state_dict,
)
from engine.models import checkpoint_keys as keys
from engine.models.components import SDXL_CONFIG_DIR, SDXLComponents, build_tiny_sdxl
from engine.models.manager import ModelManager
from engine.types import EngineInputError

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def assert_same_weights(
    a: SDXLComponents, b: SDXLComponents, parts: tuple[str, ...] = PARTS
) -> None:
    for part in parts:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys(), part
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, (part, different[:5])


def test_list_files(model_manager: ModelManager) -> None:
    assert model_manager.list_files("checkpoints") == [
        DEMO_CHECKPOINT,
        DEMO_DIFFUSERS,
        DEMO_REFINER,
    ]
    assert model_manager.list_files("loras") == [
        "demo_hyper_sd_4step_lora.safetensors",
        "demo_lcm_lora.safetensors",
        "demo_lightning_4step_lora.safetensors",
        "demo_offset_lora.safetensors",
    ]
    assert model_manager.list_files("vae") == [DEMO_VAE]
    assert model_manager.list_files("upscale_models") == ["fooocus_upscaler_s409985e5.bin"]
    assert model_manager.list_files("controlnet") == [
        "control-lora-canny-rank128.safetensors",
        "fooocus_ip_negative.safetensors",
        "fooocus_xl_cpds_128.safetensors",
        "ip-adapter-plus-face_sdxl_vit-h.bin",
        "ip-adapter-plus_sdxl_vit-h.bin",
    ]
    assert model_manager.list_files("inpaint") != []
    assert model_manager.list_files("embeddings") == [DEMO_EMBEDDING]
    with pytest.raises(ValueError, match="unknown model folder"):
        model_manager.list_files("nope")


def test_single_file_and_folder_load_identical_weights(demo_models_dir: Path) -> None:
    config = EngineConfig(models_dir=demo_models_dir, styles_dir=demo_models_dir)
    single = ModelManager(config, torch.device("cpu"), torch.float32).load_base(DEMO_CHECKPOINT)
    folder = ModelManager(config, torch.device("cpu"), torch.float32).load_base(DEMO_DIFFUSERS)
    assert_same_weights(single, folder)
    assert_same_weights(single, build_tiny_sdxl(seed=DEMO_SEED))
    assert single.name == DEMO_CHECKPOINT
    assert single.native_size == 64
    for part in PARTS:
        param = next(getattr(single, part).parameters())
        assert (param.dtype, param.device.type, param.requires_grad) == (
            torch.float32,
            "cpu",
            False,
        )
    ids = single.tokenizer("a cat").input_ids
    assert ids[0] == 49406
    assert ids[-1] == 49407


def test_our_key_names_agree_with_diffusers_conversion(demo_models_dir: Path) -> None:
    """An independent check of the mapping the demo writer and the loader share."""
    path = demo_models_dir / "checkpoints" / DEMO_CHECKPOINT
    sidecar = demo_models_dir / "checkpoints" / "fooocus_demo_tiny.config"
    reference = build_tiny_sdxl(seed=DEMO_SEED)
    common = {"config": str(sidecar), "local_files_only": True}
    unet = UNet2DConditionModel.from_single_file(str(path), subfolder="unet", **common)
    vae = AutoencoderKL.from_single_file(str(path), subfolder="vae", **common)
    for ours, theirs in ((reference.unet, unet), (reference.vae, vae)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # diffusers picks CLIP-G's source by embedding width, which the tiny model's equal widths
    # defeat, so CLIP-G is checked with its converter directly.
    converted = convert_open_clip_checkpoint(
        reference.text_encoder_2, load_file(str(path)), prefix=keys.CLIP_G_PREFIX
    )
    expected = reference.text_encoder_2.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_key_names_of_full_size_sdxl_match_diffusers() -> None:
    """The mapping on SDXL's real configs (meta tensors: no memory, no weights)."""
    unet_config = json.loads((SDXL_CONFIG_DIR / "unet" / "config.json").read_text())
    vae_config = json.loads((SDXL_CONFIG_DIR / "vae" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2")
        )
    unet_state = unet.state_dict()
    original = keys.unet_to_original(unet_state, unet_config)
    assert len(original) == len(unet_state) == 1680
    for name in (
        "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
        "output_blocks.2.2.conv.weight",
        "output_blocks.8.0.skip_connection.weight",
        "middle_block.1.transformer_blocks.9.ff.net.2.weight",
        "label_emb.0.2.bias",
    ):
        assert keys.UNET_PREFIX + name in original
    back = convert_ldm_unet_checkpoint(original, unet_config)
    assert back.keys() == unet_state.keys()
    assert all(back[k] is unet_state[k] for k in back)

    vae_state = vae.state_dict()
    ldm = keys.vae_to_original(vae_state, vae_config)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "decoder.up.3.upsample.conv.weight" in ldm
    assert "decoder.up.0.block.0.nin_shortcut.bias" in ldm
    vae_back = convert_ldm_vae_checkpoint(
        {keys.VAE_PREFIX + k: v for k, v in ldm.items()}, vae_config
    )
    assert {k: v.shape for k, v in vae_back.items()} == {k: v.shape for k, v in vae_state.items()}

    clip_state = clip_g.state_dict()
    open_clip = keys.clip_g_to_original(clip_state)
    assert open_clip[keys.CLIP_G_PREFIX + "transformer.resblocks.31.attn.in_proj_weight"].shape == (
        3840,
        1280,
    )
    clip_back = convert_open_clip_checkpoint(clip_g, open_clip, prefix=keys.CLIP_G_PREFIX)
    assert {k: v.shape for k, v in clip_back.items()} == {k: v.shape for k, v in clip_state.items()}


def test_loading_never_touches_the_network(
    model_manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access while loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_manager.load_base(DEMO_CHECKPOINT, vae_name=DEMO_VAE)
    model_manager.load_base(DEMO_DIFFUSERS)


def test_cache_keeps_the_model_and_a_new_name_replaces_it(model_manager: ModelManager) -> None:
    messages: list[str] = []
    first = model_manager.load_base(DEMO_CHECKPOINT, on_message=messages.append)
    again = model_manager.load_base(DEMO_CHECKPOINT, on_message=messages.append)
    assert again is first
    assert messages == [f"Loading base model {DEMO_CHECKPOINT} ..."]
    other = model_manager.load_base(DEMO_DIFFUSERS)
    assert other.unet is not first.unet
    assert model_manager.loaded_name == DEMO_DIFFUSERS
    model_manager.clear()
    assert model_manager.loaded_name is None


def test_custom_vae_swaps_only_the_vae(model_manager: ModelManager, demo_models_dir: Path) -> None:
    base = model_manager.load_base(DEMO_CHECKPOINT)
    with_vae = model_manager.load_base(DEMO_CHECKPOINT, vae_name=DEMO_VAE)
    assert with_vae.unet is base.unet
    assert with_vae.text_encoder is base.text_encoder
    assert with_vae.vae is not base.vae
    file_state = load_file(str(demo_models_dir / "vae" / DEMO_VAE))
    assert torch.equal(
        with_vae.vae.state_dict()["encoder.mid_block.attentions.0.to_q.weight"],
        file_state["encoder.mid.attn_1.q.weight"].flatten(1),
    )
    assert model_manager.load_base(DEMO_CHECKPOINT, vae_name=DEMO_VAE) is with_vae
    assert model_manager.load_base(DEMO_CHECKPOINT) is base


def test_ckpt_file_with_state_dict_wrapper_loads(tmp_path: Path, demo_models_dir: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    reference = build_tiny_sdxl(seed=DEMO_SEED)
    torch.save({"state_dict": original_state_dict(reference)}, checkpoints / "tiny.ckpt")
    shutil.copytree(
        demo_models_dir / "checkpoints" / "fooocus_demo_tiny.config", checkpoints / "tiny.config"
    )
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    assert manager.list_files("checkpoints") == ["tiny.ckpt"]
    assert_same_weights(manager.load_base("tiny.ckpt"), reference)


def test_a_file_that_is_not_sdxl_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)},
        str(tmp_path / "checkpoints" / "sd15.safetensors"),
    )
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    with pytest.raises(
        EngineInputError, match=r"sd15\.safetensors is not an SDXL checkpoint"
    ) as info:
        manager.load_base("sd15.safetensors")
    assert info.value.field == "base_model_name"


def test_a_vae_of_another_shape_is_an_input_error(tmp_path: Path, demo_models_dir: Path) -> None:
    shutil.copytree(demo_models_dir / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "vae").mkdir()
    save_file(
        {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)},
        str(tmp_path / "vae" / "bad.safetensors"),
    )
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    base = manager.load_base(DEMO_CHECKPOINT)
    with pytest.raises(EngineInputError, match=r"bad\.safetensors") as info:
        manager.load_base(DEMO_CHECKPOINT, vae_name="bad.safetensors")
    assert info.value.field == "vae_name"
    assert manager.load_base(DEMO_CHECKPOINT) is base


def test_half_precision_keeps_the_vae_in_a_safe_dtype(demo_models_dir: Path) -> None:
    config = EngineConfig(demo_models_dir, demo_models_dir)
    # On CUDA the VAE runs in bfloat16: float16 overflows in the SDXL VAE.
    cuda = ModelManager(config, torch.device("cuda"), torch.float16)
    assert cuda.vae_dtype == torch.bfloat16
    cpu = ModelManager(config, torch.device("cpu"), torch.bfloat16)
    for name in (DEMO_CHECKPOINT, DEMO_DIFFUSERS):
        components = cpu.load_base(name)
        for part in ("unet", "text_encoder", "text_encoder_2"):
            assert {p.dtype for p in getattr(components, part).parameters()} == {torch.bfloat16}
        assert {p.dtype for p in components.vae.parameters()} == {torch.float32}
    with_vae = cpu.load_base(DEMO_DIFFUSERS, vae_name=DEMO_VAE)
    assert {p.dtype for p in with_vae.vae.parameters()} == {torch.float32}
