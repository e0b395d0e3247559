"""Batching the images of one request: each keeps its seed's noise and its own prompt, and the
batch gives the images the one-by-one run gives (within float rounding)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import (
    Engine,
    EngineEvent,
    EngineInputError,
    EngineRequest,
    EngineResult,
    StopAction,
)
from engine.batch import BatchItem
from engine.demo.writer import DEMO_CHECKPOINT
from tests.engine.helpers import cpu_engine

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


@pytest.fixture(scope="module")
def engines(demo_models_dir: Path) -> tuple[Engine, Engine]:
    return (
        cpu_engine(demo_models_dir, batch_images=False),
        cpu_engine(demo_models_dir, batch_images=True),
    )


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


# --- several requests as one batch (FOOOCUS_BATCH_TASKS) --------------------------------------


def _close(a: object, b: object) -> None:
    assert (a.index, a.seed, a.metadata) == (b.index, b.seed, b.metadata)  # type: ignore[attr-defined]
    x = np.asarray(a.image, np.int16)  # type: ignore[attr-defined]
    y = np.asarray(b.image, np.int16)  # type: ignore[attr-defined]
    assert np.abs(x - y).max() <= 1


def test_batched_tasks_keep_their_own_seeds_prompts_events_and_stop(
    engines: tuple[Engine, Engine],
) -> None:
    alone, batched = engines
    cat = replace(REQUEST, prompt="a cat", seed=1, image_number=2)
    dog = replace(REQUEST, prompt="a dog", seed=9, image_number=1)
    tall = replace(REQUEST, prompt="a tower", height=96, image_number=1)  # another size
    bad = replace(REQUEST, width=65)
    expected = [alone.generate(r) for r in (cat, dog, tall)]
    events: dict[str, list[EngineEvent]] = {"cat": [], "dog": [], "tall": [], "bad": []}
    items = [
        BatchItem(cat, events["cat"].append),
        BatchItem(dog, events["dog"].append),
        BatchItem(tall, events["tall"].append),
        BatchItem(bad, events["bad"].append),
    ]
    results = batched.generate_many(items)
    assert isinstance(results[3], EngineInputError)
    assert results[3].field == "width"
    for got, want in zip(results[:3], expected, strict=True):
        assert isinstance(got, EngineResult)
        assert len(got.images) == len(want.images)
        for a, b in zip(got.images, want.images, strict=True):
            _close(a, b)
    # cat and dog shared one batch of three rows; each heard only its own images.
    cat_steps = [e.message for e in events["cat"] if e.message.startswith("Sampling")]
    assert cat_steps == [f"Sampling step {s}/3, images 1-2/2 ..." for s in (1, 2, 3)]
    assert [e.image.seed for e in events["dog"] if e.image is not None] == [9]
    assert [e.progress for e in events["dog"]] == sorted(e.progress for e in events["dog"])
    assert events["bad"] == []

    polls: list[int] = []

    def dog_stops() -> StopAction | None:
        polls.append(1)
        return "stop" if len(polls) == 2 else None

    cat_result, dog_result = batched.generate_many(
        [BatchItem(cat), BatchItem(dog, None, dog_stops)]
    )
    assert isinstance(dog_result, EngineResult)
    assert dog_result.stopped
    assert dog_result.images == ()
    assert isinstance(cat_result, EngineResult)
    assert not cat_result.stopped
    for a, b in zip(cat_result.images, expected[0].images, strict=True):
        _close(a, b)
