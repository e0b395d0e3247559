"""LoRA merging: the math, every key dialect, exact restoring, switching sets, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig
from engine.demo.writer import DEMO_CHECKPOINT
from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.models.lora import LoraPatcher
from engine.models.manager import ModelManager
from engine.types import EngineInputError

LCM = "demo_lcm_lora.safetensors"
LIGHTNING = "demo_lightning_4step_lora.safetensors"
HYPER = "demo_hyper_sd_4step_lora.safetensors"
OFFSET = "demo_offset_lora.safetensors"
TO_Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
TO_Q_KOHYA = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


def snapshot(components: SDXLComponents) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v.clone()
        for part in ("unet", "text_encoder", "text_encoder_2")
        for k, v in getattr(components, part).state_dict().items()
    }


def assert_bit_exact(components: SDXLComponents, expected: dict[str, torch.Tensor]) -> None:
    now = snapshot(components)
    assert now.keys() == expected.keys()
    assert [k for k in now if not torch.equal(now[k], expected[k])] == []


def unet_output(c: SDXLComponents) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 64, generator=generator)
    added = {
        "text_embeds": torch.randn(1, 32, generator=generator),
        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
    }
    with torch.no_grad():
        return c.unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample


def text_output(c: SDXLComponents) -> torch.Tensor:
    ids = c.tokenizer(
        "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    assert c.text_encoder is not None
    with torch.no_grad():
        return c.text_encoder(ids).last_hidden_state


def test_lora_changes_outputs_and_the_empty_set_restores_exact_weights(
    model_manager: ModelManager,
) -> None:
    base = model_manager.load_base(DEMO_CHECKPOINT)
    original, unet_before, text_before = snapshot(base), unet_output(base), text_output(base)
    patched = model_manager.load_base(DEMO_CHECKPOINT, loras=[(LCM, 1.0)])
    assert patched is base  # merged in place: no reload, no copy
    assert not torch.equal(unet_output(patched), unet_before)
    assert not torch.equal(text_output(patched), text_before)
    model_manager.load_base(DEMO_CHECKPOINT, loras=())
    assert_bit_exact(base, original)
    assert torch.equal(unet_output(base), unet_before)


def test_weight_zero_is_no_lora(model_manager: ModelManager) -> None:
    base = model_manager.load_base(DEMO_CHECKPOINT)
    original = snapshot(base)
    model_manager.load_base(DEMO_CHECKPOINT, loras=[(LCM, 0.7), (OFFSET, 0.1)])
    model_manager.load_base(DEMO_CHECKPOINT, loras=[(LCM, 0.0), (OFFSET, 0.0)])
    assert_bit_exact(base, original)


def test_switching_sets_equals_applying_the_new_set_fresh(demo_models_dir: Path) -> None:
    config = EngineConfig(demo_models_dir, demo_models_dir)
    switched = ModelManager(config, torch.device("cpu"), torch.float32)
    switched.load_base(DEMO_CHECKPOINT, loras=[(LCM, 1.0), (OFFSET, 0.5)])
    messages: list[str] = []
    a = switched.load_base(
        DEMO_CHECKPOINT, loras=[(LIGHTNING, 1.0), (OFFSET, 0.3)], on_message=messages.append
    )
    fresh = ModelManager(config, torch.device("cpu"), torch.float32)
    b = fresh.load_base(DEMO_CHECKPOINT, loras=[(LIGHTNING, 1.0), (OFFSET, 0.3)])
    assert_bit_exact(a, snapshot(b))
    assert messages == [f"LoRAs applied: {LIGHTNING} (1), {OFFSET} (0.3)"]
    # The same set again is a no-op: no message, nothing rewritten.
    switched.load_base(
        DEMO_CHECKPOINT, loras=[(LIGHTNING, 1.0), (OFFSET, 0.3)], on_message=messages.append
    )
    assert len(messages) == 1


def test_merge_math_for_linear_and_3x3_conv(
    model_manager: ModelManager, demo_models_dir: Path
) -> None:
    base = model_manager.load_base(DEMO_CHECKPOINT)
    original = snapshot(base)
    model_manager.load_base(DEMO_CHECKPOINT, loras=[(LCM, 0.7), (HYPER, -0.5)])
    cases = [
        (LCM, TO_Q_KOHYA, TO_Q, 0.7),
        (HYPER, "lora_unet_output_blocks_3_0_in_layers_2", "up_blocks.1.resnets.0.conv1", -0.5),
    ]
    for file, key, module, weight in cases:
        state = load_file(str(demo_models_dir / "loras" / file))
        down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
        scale = float(state[f"{key}.alpha"]) / down.shape[0]
        expected_delta = (up.flatten(1) @ down.flatten(1)).reshape(
            original[f"unet.{module}.weight"].shape
        )
        expected = original[f"unet.{module}.weight"] + weight * scale * expected_delta
        actual = base.unet.get_submodule(module).weight
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def factors(
    seed: int, out_features: int = 64, in_features: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, in_features, generator=generator), torch.randn(
        out_features, 4, generator=generator
    )


@pytest.mark.parametrize(
    "names",
    [
        {"down": f"{TO_Q_KOHYA}.lora_down.weight", "up": f"{TO_Q_KOHYA}.lora_up.weight"},
        {
            "down": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "up": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight",
        },
        {"down": f"unet.{TO_Q}.lora_A.weight", "up": f"unet.{TO_Q}.lora_B.weight"},
        {"down": f"unet.{TO_Q}.lora.down.weight", "up": f"unet.{TO_Q}.lora.up.weight"},
        {
            "down": f"unet.{TO_Q.removesuffix('.to_q')}.processor.to_q_lora.down.weight",
            "up": f"unet.{TO_Q.removesuffix('.to_q')}.processor.to_q_lora.up.weight",
        },
    ],
    ids=["kohya-diffusers", "kohya-sgm", "peft", "diffusers", "attn-processor"],
)
def test_every_key_dialect_patches_the_same_module(tmp_path: Path, names: dict[str, str]) -> None:
    components = build_tiny_sdxl()
    before = components.unet.get_submodule(TO_Q).weight.clone()
    down, up = factors(1)
    path = tmp_path / "lora.safetensors"
    save_file({names["down"]: down, names["up"]: up}, str(path))
    assert LoraPatcher(components).apply([(path, 0.5)])
    after = components.unet.get_submodule(TO_Q).weight
    torch.testing.assert_close(after, before + 0.5 * up @ down, rtol=0, atol=1e-6)


def test_text_encoder_dialects_and_loha(tmp_path: Path) -> None:
    components = build_tiny_sdxl()
    assert components.text_encoder is not None
    te1 = components.text_encoder.get_parameter("encoder.layers.1.self_attn.k_proj.weight")
    te2 = components.text_encoder_2.get_parameter("text_model.encoder.layers.0.mlp.fc2.weight")
    te1_before, te2_before = te1.clone(), te2.clone()
    down, up = factors(2, 32, 32)
    w1a, w1b, w2a, w2b = (torch.randn(s) for s in ((32, 2), (2, 64), (32, 2), (2, 64)))
    path = tmp_path / "te.safetensors"
    loha = "lora_te2_text_model_encoder_layers_0_mlp_fc2"
    save_file(
        {
            "text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_A.weight": down,
            "text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_B.weight": up,
            f"{loha}.hada_w1_a": w1a,
            f"{loha}.hada_w1_b": w1b,
            f"{loha}.hada_w2_a": w2a,
            f"{loha}.hada_w2_b": w2b,
            f"{loha}.alpha": torch.tensor(1.0),
        },
        str(path),
    )
    LoraPatcher(components).apply([(path, 1.0)])
    torch.testing.assert_close(te1, te1_before + up @ down, rtol=0, atol=1e-6)
    torch.testing.assert_close(te2, te2_before + 0.5 * (w1a @ w1b) * (w2a @ w2b), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (  # an SD1.5 LoRA: SDXL has no attention on its first level
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(
                    4, 320
                ),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
            },
            "no module lora_unet_down_blocks_0_attentions_0_proj_in",
        ),
        (  # the right name but the full-size SDXL shape
            {
                f"{TO_Q_KOHYA}.lora_down.weight": torch.zeros(4, 640),
                f"{TO_Q_KOHYA}.lora_up.weight": torch.zeros(640, 4),
            },
            "does not fit the weight",
        ),
        ({f"{TO_Q_KOHYA}.oft_blocks": torch.zeros(4, 4, 4)}, "unsupported key"),
        ({f"{TO_Q_KOHYA}.lora_down.weight": torch.zeros(4, 64)}, "incomplete factors"),
    ],
    ids=["other-architecture", "shape-mismatch", "unsupported-type", "incomplete"],
)
def test_a_lora_that_does_not_fit_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, state: dict[str, torch.Tensor], problem: str
) -> None:
    components = build_tiny_sdxl()
    good = tmp_path / "good.safetensors"
    save_file(
        {
            f"{TO_Q_KOHYA}.lora_down.weight": factors(3)[0],
            f"{TO_Q_KOHYA}.lora_up.weight": factors(3)[1],
        },
        str(good),
    )
    bad = tmp_path / "bad_sd15_lora.safetensors"
    save_file(state, str(bad))
    patcher = LoraPatcher(components)
    original = snapshot(components)
    with pytest.raises(EngineInputError, match=problem) as info:
        patcher.apply([(good, 1.0), (bad, 1.0)])
    assert info.value.field == "loras"
    assert "bad_sd15_lora.safetensors" in info.value.message
    assert_bit_exact(components, original)
    assert patcher.patched == 0


def test_the_manager_reports_a_bad_lora_by_file_name(tmp_path: Path, demo_models_dir: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    for name in (DEMO_CHECKPOINT, "fooocus_demo_tiny.config"):
        (tmp_path / "checkpoints" / name).symlink_to(demo_models_dir / "checkpoints" / name)
    (tmp_path / "loras").mkdir()
    save_file(
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)},
        str(tmp_path / "loras" / "sd15.safetensors"),
    )
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    with pytest.raises(EngineInputError, match=r"LoRA sd15\.safetensors does not fit this model"):
        manager.load_base(DEMO_CHECKPOINT, loras=[("sd15.safetensors", 1.0)])


def test_restoring_is_bit_exact_in_bfloat16(demo_models_dir: Path) -> None:
    config = EngineConfig(demo_models_dir, demo_models_dir)
    manager = ModelManager(config, torch.device("cpu"), torch.bfloat16)
    base = manager.load_base(DEMO_CHECKPOINT)
    original = snapshot(base)
    manager.load_base(DEMO_CHECKPOINT, loras=[(LCM, 1.0), (HYPER, 0.8)])
    patched = base.unet.get_parameter(f"{TO_Q}.weight")
    assert patched.dtype == torch.bfloat16
    assert not torch.equal(patched, original[f"unet.{TO_Q}.weight"])
    manager.load_base(DEMO_CHECKPOINT)
    assert_bit_exact(base, original)
