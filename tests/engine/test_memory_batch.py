"""Batching the images of one request: each keeps its seed's noise and its own prompt, and the
batch gives the images the one-by-one run gives (within float rounding)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import Engine, EngineConfig, EngineEvent, EngineRequest, StopAction
from engine.demo.writer import DEMO_CHECKPOINT

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUEST = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a __color__ lighthouse",  # a wildcard: every image gets its own prompt
    negative_prompt="blurry",
    width=64,
    height=64,
    image_number=3,
    seed=5,
    overwrite_step=3,
    disable_preview=True,
)


def _engine(models: Path, *, batch: bool) -> Engine:
    config = EngineConfig(
        models_dir=models,
        styles_dir=ROOT / "styles",
        device="cpu",
        allow_downloads=False,
        batch_images=batch,
    )
    return Engine(config)


@pytest.fixture(scope="module")
def engines(demo_models_dir: Path) -> tuple[Engine, Engine]:
    return _engine(demo_models_dir, batch=False), _engine(demo_models_dir, batch=True)


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde_gpu", "euler_ancestral", "euler", "dpmpp_2m"])
def test_batched_images_equal_the_one_by_one_images(
    engines: tuple[Engine, Engine], sampler: str
) -> None:
    request = replace(REQUEST, sampler_name=sampler)
    one_by_one, batched = (engine.generate(request) for engine in engines)
    assert [i.seed for i in batched.images] == [5, 6, 7]
    prompts = {str(i.metadata.get("full_prompt")) for i in batched.images}
    assert len(prompts) > 1  # the wildcard drew different words, yet the batch stacked them
    for a, b in zip(one_by_one.images, batched.images, strict=True):
        assert (a.index, a.seed, a.metadata) == (b.index, b.seed, b.metadata)
        diff = np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16))
        assert diff.max() <= 1  # batched matmuls may round the last bit differently


def test_a_batch_reports_its_steps_and_honours_stop(engines: tuple[Engine, Engine]) -> None:
    _, batched = engines
    events: list[EngineEvent] = []
    result = batched.generate(REQUEST, on_event=events.append)
    steps = [e.message for e in events if e.message.startswith("Sampling step")]
    assert steps == [f"Sampling step {s}/3, images 1-3/3 ..." for s in (1, 2, 3)]
    progress = [e.progress for e in events if e.kind == "progress"]
    assert progress == sorted(progress)
    assert [e.image.index for e in events if e.image is not None] == [0, 1, 2]
    assert len(result.images) == 3

    polls: list[int] = []

    def stop_on_second_step() -> StopAction | None:
        polls.append(1)
        return "stop" if len(polls) == 3 else None

    stopped = batched.generate(REQUEST, should_stop=stop_on_second_step)
    assert stopped.stopped
    assert stopped.images == ()


def test_skip_in_a_batch_drops_that_batch(engines: tuple[Engine, Engine]) -> None:
    _, batched = engines
    polls: list[int] = []

    def skip_in_the_first_step() -> StopAction | None:
        polls.append(1)
        return "skip" if len(polls) == 2 else None

    result = batched.generate(replace(REQUEST, image_number=2), should_stop=skip_in_the_first_step)
    assert not result.stopped
    assert result.images == ()
