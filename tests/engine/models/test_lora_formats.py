"""The LoRA formats Fooocus merges beyond plain LoRA (issue 12, items 8-13).

Each test writes a tiny file in the format, with key names from the format's specification (LyCORIS
and kohya names, as Fooocus's ``match_lora`` and diffusers read them; the PEFT file is written by
diffusers' own ``save_lora_weights``), merges it into the tiny SDXL model and compares the weights
with the same maths computed here another way (explicit blocks and per-tap matrix products instead
of ``torch.kron`` and ``einsum``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from engine.config import EngineConfig
from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.models.lora import LoraPatcher
from engine.models.manager import ModelManager
from engine.types import EngineInputError

TO_Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
TO_K = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
CONV = "up_blocks.1.resnets.0.conv1"  # [64, 128, 3, 3]
NORM = "down_blocks.1.attentions.0.norm"  # GroupNorm(64)


def kohya(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.3


def param(c: SDXLComponents, module: str, which: str = "weight") -> torch.Tensor:
    return getattr(c.unet.get_submodule(module), which)


def kron_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """kron(w1, w2) written out block by block (w1 2-D, w2 2-D or 4-D)."""
    rows, cols = w2.shape[0], w2.shape[1]
    out = torch.zeros(w1.shape[0] * rows, w1.shape[1] * cols, *w2.shape[2:])
    for a in range(w1.shape[0]):
        for b in range(w1.shape[1]):
            out[a * rows : (a + 1) * rows, b * cols : (b + 1) * cols] = w1[a, b] * w2
    return out


def per_tap(left: torch.Tensor, core: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """out[:, :, k, l] = left @ core[:, :, k, l] @ right: a Tucker product, one tap at a time."""
    out = torch.zeros(left.shape[0], right.shape[1], *core.shape[2:])
    for k in range(core.shape[2]):
        for l_ in range(core.shape[3]):
            out[:, :, k, l_] = left @ core[:, :, k, l_] @ right
    return out


def merge(
    tmp_path: Path, state: dict[str, torch.Tensor], strength: float, name: str = "x"
) -> tuple[SDXLComponents, dict[str, torch.Tensor]]:
    components = build_tiny_sdxl()
    before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    assert LoraPatcher(components).apply([(path, strength)])
    return components, before


def test_lokr_with_whole_and_factored_halves(tmp_path: Path) -> None:
    w1, w2a, w2b = rand(8, 8, seed=1), rand(8, 2, seed=2), rand(2, 8, seed=3)
    w1a, w1b, w2 = rand(8, 2, seed=4), rand(2, 8, seed=5), rand(8, 8, seed=6)
    state = {
        f"{kohya(TO_Q)}.lokr_w1": w1,
        f"{kohya(TO_Q)}.lokr_w2_a": w2a,
        f"{kohya(TO_Q)}.lokr_w2_b": w2b,
        f"{kohya(TO_Q)}.alpha": torch.tensor(1.0),
        f"{kohya(TO_K)}.lokr_w1_a": w1a,
        f"{kohya(TO_K)}.lokr_w1_b": w1b,
        f"{kohya(TO_K)}.lokr_w2": w2,
        f"{kohya(TO_K)}.alpha": torch.tensor(3.0),
    }
    c, before = merge(tmp_path, state, 0.8)
    # W += strength · alpha/rank · kron(w1, w2); rank is that of the factored half.
    expected_q = before[f"{TO_Q}.weight"] + 0.8 * (1.0 / 2) * kron_blocks(w1, w2a @ w2b)
    expected_k = before[f"{TO_K}.weight"] + 0.8 * (3.0 / 2) * kron_blocks(w1a @ w1b, w2)
    torch.testing.assert_close(param(c, TO_Q), expected_q, rtol=0, atol=1e-5)
    torch.testing.assert_close(param(c, TO_K), expected_k, rtol=0, atol=1e-5)


def test_lokr_conv_with_a_tucker_core(tmp_path: Path) -> None:
    w1 = rand(4, 8, seed=1)
    t2, w2a, w2b = rand(3, 3, 3, 3, seed=2), rand(3, 16, seed=3), rand(3, 16, seed=4)
    state = {
        f"{kohya(CONV)}.lokr_w1": w1,
        f"{kohya(CONV)}.lokr_t2": t2,
        f"{kohya(CONV)}.lokr_w2_a": w2a,
        f"{kohya(CONV)}.lokr_w2_b": w2b,
        f"{kohya(CONV)}.alpha": torch.tensor(1.5),
    }
    c, before = merge(tmp_path, state, 1.0)
    w2 = per_tap(w2a.T, t2, w2b)  # [16, 16, 3, 3]
    expected = before[f"{CONV}.weight"] + (1.5 / 3) * kron_blocks(w1, w2)
    torch.testing.assert_close(param(c, CONV), expected, rtol=0, atol=1e-5)


def test_locon_with_a_tucker_middle(tmp_path: Path) -> None:
    down, mid, up = rand(4, 128, 1, 1, seed=1), rand(4, 4, 3, 3, seed=2), rand(64, 4, 1, 1, seed=3)
    state = {
        f"{kohya(CONV)}.lora_down.weight": down,
        f"{kohya(CONV)}.lora_mid.weight": mid,
        f"{kohya(CONV)}.lora_up.weight": up,
        f"{kohya(CONV)}.alpha": torch.tensor(2.0),
    }
    c, before = merge(tmp_path, state, 0.5)
    delta = per_tap(up.flatten(1), mid, down.flatten(1))
    expected = before[f"{CONV}.weight"] + 0.5 * (2.0 / 4) * delta
    torch.testing.assert_close(param(c, CONV), expected, rtol=0, atol=1e-5)


def test_loha_with_tucker_cores(tmp_path: Path) -> None:
    w1a, w1b, t1 = rand(3, 64, seed=1), rand(3, 128, seed=2), rand(3, 3, 3, 3, seed=3)
    w2a, w2b, t2 = rand(3, 64, seed=4), rand(3, 128, seed=5), rand(3, 3, 3, 3, seed=6)
    state = {
        f"{kohya(CONV)}.hada_w1_a": w1a,
        f"{kohya(CONV)}.hada_w1_b": w1b,
        f"{kohya(CONV)}.hada_t1": t1,
        f"{kohya(CONV)}.hada_w2_a": w2a,
        f"{kohya(CONV)}.hada_w2_b": w2b,
        f"{kohya(CONV)}.hada_t2": t2,
        f"{kohya(CONV)}.alpha": torch.tensor(1.0),
    }
    c, before = merge(tmp_path, state, 1.0)
    delta = per_tap(w1a.T, t1, w1b) * per_tap(w2a.T, t2, w2b)
    expected = before[f"{CONV}.weight"] + (1.0 / 3) * delta
    torch.testing.assert_close(param(c, CONV), expected, rtol=0, atol=1e-5)


def test_full_diffs_and_norm_weights(tmp_path: Path) -> None:
    diff, diff_b = rand(64, 128, 3, 3, seed=1), rand(64, seed=2)
    w_norm, b_norm = rand(64, seed=3), rand(64, seed=4)
    state = {
        f"{kohya(CONV)}.diff": diff,
        f"{kohya(CONV)}.diff_b": diff_b,
        f"{kohya(NORM)}.w_norm": w_norm,
        f"{kohya(NORM)}.b_norm": b_norm,
    }
    c, before = merge(tmp_path, state, 0.6)
    for module, which, delta in (
        (CONV, "weight", diff),
        (CONV, "bias", diff_b),
        (NORM, "weight", w_norm),
        (NORM, "bias", b_norm),
    ):
        expected = before[f"{module}.{which}"] + 0.6 * delta
        torch.testing.assert_close(param(c, module, which), expected, rtol=0, atol=1e-6)


def test_peft_alpha_comes_from_the_files_metadata(tmp_path: Path) -> None:
    down_q, up_q = rand(4, 64, seed=1), rand(64, 4, seed=2)
    down_k, up_k = rand(4, 64, seed=3), rand(64, 4, seed=4)
    # diffusers writes the file itself: PEFT names and LoraConfig fields in the metadata.
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers={
            f"{TO_Q}.lora_A.weight": down_q,
            f"{TO_Q}.lora_B.weight": up_q,
            f"{TO_K}.lora_A.weight": down_k,
            f"{TO_K}.lora_B.weight": up_k,
        },
        unet_lora_adapter_metadata={"r": 4, "lora_alpha": 8, "alpha_pattern": {"attn1.to_k": 2}},
    )
    components = build_tiny_sdxl()
    q, k = param(components, TO_Q).clone(), param(components, TO_K).clone()
    LoraPatcher(components).apply([(tmp_path / "pytorch_lora_weights.safetensors", 1.0)])
    torch.testing.assert_close(
        param(components, TO_Q), q + (8 / 4) * up_q @ down_q, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        param(components, TO_K), k + (2 / 4) * up_k @ down_k, rtol=0, atol=1e-5
    )


def test_a_module_named_twice_is_merged_once(tmp_path: Path) -> None:
    down, up = rand(4, 64, seed=1), rand(64, 4, seed=2)
    state = {
        f"{kohya(TO_Q)}.lora_down.weight": down,
        f"{kohya(TO_Q)}.lora_up.weight": up,
        f"unet.{TO_Q}.lora.down.weight": down.clone(),
        f"unet.{TO_Q}.lora.up.weight": up.clone(),
    }
    c, before = merge(tmp_path, state, 1.0)
    expected = before[f"{TO_Q}.weight"] + up @ down
    torch.testing.assert_close(param(c, TO_Q), expected, rtol=0, atol=1e-5)


def test_old_diffusers_names_without_the_unet_prefix_and_sd1_text_names(tmp_path: Path) -> None:
    down, up = rand(4, 64, seed=1), rand(64, 4, seed=2)
    tdown, tup = rand(4, 32, seed=3), rand(32, 4, seed=4)
    attn = TO_Q.removesuffix(".to_q")
    state = {
        f"{attn}.processor.to_q_lora.down.weight": down,
        f"{attn}.processor.to_q_lora.up.weight": up,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": tdown,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": tup,
    }
    components = build_tiny_sdxl()
    assert components.text_encoder is not None
    q = param(components, TO_Q).clone()
    clip_l = components.text_encoder.get_parameter("encoder.layers.0.self_attn.q_proj.weight")
    clip_g = components.text_encoder_2.get_parameter(
        "text_model.encoder.layers.0.self_attn.q_proj.weight"
    )
    clip_l_before, clip_g_before = clip_l.clone(), clip_g.clone()
    path = tmp_path / "old.safetensors"
    save_file(state, str(path))
    LoraPatcher(components).apply([(path, 1.0)])
    torch.testing.assert_close(param(components, TO_Q), q + up @ down, rtol=0, atol=1e-5)
    # SD1-style lora_te_ names go to CLIP-L, as in Fooocus's key map; CLIP-G is untouched.
    torch.testing.assert_close(clip_l, clip_l_before + tup @ tdown, rtol=0, atol=1e-5)
    assert torch.equal(clip_g, clip_g_before)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickled_loras_are_listed_and_loaded_weights_only(tmp_path: Path, suffix: str) -> None:
    down, up = rand(4, 64, seed=1), rand(64, 4, seed=2)
    (tmp_path / "loras").mkdir()
    path = tmp_path / "loras" / f"old{suffix}"
    state = {f"{kohya(TO_Q)}.lora_down.weight": down, f"{kohya(TO_Q)}.lora_up.weight": up}
    torch.save({"state_dict": state} if suffix == ".ckpt" else state, path)
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    assert manager.list_files("loras") == [path.name]
    components = build_tiny_sdxl()
    q = param(components, TO_Q).clone()
    LoraPatcher(components).apply([(path, 1.0)])
    torch.testing.assert_close(param(components, TO_Q), q + up @ down, rtol=0, atol=1e-5)


class _NotAWeight:
    pass


def test_a_pickle_that_is_not_weights_only_and_other_files_are_refused(tmp_path: Path) -> None:
    components = build_tiny_sdxl()
    evil = tmp_path / "evil.pt"
    torch.save({"x": _NotAWeight()}, evil)
    with pytest.raises(EngineInputError, match=r"LoRA evil\.pt is not a weights-only torch file"):
        LoraPatcher(components).apply([(evil, 1.0)])
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(EngineInputError, match=r"LoRA notes\.txt is not a LoRA file format"):
        LoraPatcher(components).apply([(other, 1.0)])


def test_dora_files_are_refused_by_format(tmp_path: Path) -> None:
    components = build_tiny_sdxl()
    path = tmp_path / "dora.safetensors"
    save_file(
        {
            f"{kohya(TO_Q)}.lora_down.weight": rand(4, 64, seed=1),
            f"{kohya(TO_Q)}.lora_up.weight": rand(64, 4, seed=2),
            f"{kohya(TO_Q)}.dora_scale": torch.ones(1, 64),
        },
        str(path),
    )
    with pytest.raises(EngineInputError, match=r"LoRA dora\.safetensors is in the DoRA") as info:
        LoraPatcher(components).apply([(path, 1.0)])
    assert info.value.field == "loras"
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers={
            f"{TO_Q}.lora_A.weight": rand(4, 64, seed=1),
            f"{TO_Q}.lora_B.weight": rand(64, 4, seed=2),
        },
        unet_lora_adapter_metadata={"r": 4, "lora_alpha": 4, "use_dora": True},
        weight_name="peft_dora.safetensors",
    )
    with pytest.raises(EngineInputError, match=r"LoRA peft_dora\.safetensors is in the DoRA"):
        LoraPatcher(components).apply([(tmp_path / "peft_dora.safetensors", 1.0)])
