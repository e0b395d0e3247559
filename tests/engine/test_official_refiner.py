"""The official SDXL refiner (CLIP-G only, aesthetic-score ADM) on its tiny demo stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from engine import Engine, EngineRequest
from engine.demo.writer import DEMO_CHECKPOINT, DEMO_REFINER
from engine.models import checkpoint_keys as keys
from engine.models.components import REFINER_CONFIG_DIR, SDXLComponents
from engine.models.manager import ModelManager
from tests.engine.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUEST = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    refiner_model_name=DEMO_REFINER,
    prompt="a cat",
    negative_prompt="blurry",
    style_selections=(),
    width=64,
    height=64,
    image_number=1,
    seed=7,
    sampler_name="euler",
    overwrite_step=4,
    overwrite_switch=2,
)


def test_shipped_refiner_config_is_the_refiner_architecture() -> None:
    config = json.loads((REFINER_CONFIG_DIR / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    names = {keys.unet_name_to_sgm(name, config) for name in state}
    assert len(names) == len(state)  # every weight has its own SGM name
    assert state["add_embedding.linear_1.weight"].shape == (1536, 1280 + 5 * 256)
    assert state["conv_in.weight"].shape == (384, 4, 3, 3)
    assert config["cross_attention_dim"] == 1280
    assert "input_blocks.11.0.in_layers.2.weight" in names  # four levels of three blocks


def test_demo_refiner_loads_as_clip_g_only(model_manager: ModelManager) -> None:
    refiner = model_manager.load_refiner(DEMO_REFINER)
    assert refiner.clip_g_only
    assert refiner.text_encoder is None
    assert len(refiner.unet.config.block_out_channels) == 4
    assert refiner.unet.config.cross_attention_dim == 32
    assert refiner.unet.config.projection_class_embeddings_input_dim == 32 + 5 * 8


@pytest.fixture
def refiner_calls(engine: Engine) -> Iterator[list[dict[str, Any]]]:
    """The keyword arguments of every refiner UNet call during the test."""
    manager = engine.manager
    assert isinstance(manager, ModelManager)
    manager.load_base(DEMO_CHECKPOINT)  # a new base model drops the refiner: load it first
    refiner: SDXLComponents = manager.load_refiner(DEMO_REFINER)
    calls: list[dict[str, Any]] = []

    def record(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append({"args": args, **kwargs})

    handle = refiner.unet.register_forward_pre_hook(record, with_kwargs=True)
    yield calls
    handle.remove()


def _pixels(engine: Engine, request: EngineRequest) -> np.ndarray:
    return np.asarray(engine.generate(request).images[0].image, dtype=np.float32)


def test_joint_and_separate_swap_with_the_official_refiner(
    engine: Engine, refiner_calls: list[dict[str, Any]]
) -> None:
    joint = _pixels(engine, REQUEST)
    assert len(refiner_calls) == 1  # base runs steps 0..2, the refiner step 3
    call = refiner_calls[0]
    assert call["encoder_hidden_states"].shape == (2, 77, 32)  # CLIP-G tokens only
    time_ids = call["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 6.0], [64.0, 64.0, 0.0, 0.0, 2.5]]
    refiner_calls.clear()
    separate = _pixels(engine, replace(REQUEST, refiner_swap_method="separate"))
    assert len(refiner_calls) == 2  # steps 2 and 3
    plain = _pixels(engine, replace(REQUEST, refiner_model_name="None"))
    assert not np.array_equal(joint, plain)
    assert not np.array_equal(joint, separate)


def test_sai_preset_turns_the_official_refiner_on() -> None:
    preset = json.loads((ROOT / "presets" / "sai.json").read_text())
    assert preset["default_refiner"] == "sd_xl_refiner_1.0_0.9vae.safetensors"
    assert preset["default_refiner_switch"] == 0.75
    assert "sd_xl_refiner_1.0_0.9vae.safetensors" in preset["checkpoint_downloads"]
