"""``FOOOCUS_BATCH_TASKS``: a real worker on the demo engine runs compatible queued tasks through
one ``Engine.generate_many`` call, each task keeping its own seeds, events, stop and result.

Tasks are queued before the worker starts, so what it claims does not depend on timing. The
batched images are compared with the images the same tasks give one at a time (within one level
of rounding per pixel: a batched UNet call need not round like a single one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from generation import announce, events
from generation.bootstrap import build_engine
from generation.catalog import get_catalog
from generation.submit import submit_generate
from generation.webhooks import WebhookSender
from generation.worker import EngineWorker
from history.models import ENDED_STATUSES, Task, TaskStatus

pytestmark = pytest.mark.django_db(transaction=True)

CAT = {"performance_selection": "Lightning", "prompt": "a cat", "image_seed": 3}
DOG = {"performance_selection": "Lightning", "prompt": "a dog", "image_seed": 11}


@pytest.fixture(autouse=True)
def demo_settings(settings: Any, demo_models: Path, tmp_path: Path) -> Iterator[None]:
    settings.FOOOCUS_MODELS_DIR = demo_models
    settings.FOOOCUS_PRESET = "demo"
    settings.FOOOCUS_API_KEYS = ""
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"
    get_catalog.cache_clear()
    yield
    get_catalog.cache_clear()


class Recorder:
    """A publisher that keeps what the announcer publishes, by task."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = {}

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        event = message["event"]
        self.events.setdefault(event["task_id"], []).append(event)

    def send(self, channel: str, message: dict[str, Any]) -> None:
        pass


def queue(*bodies: dict[str, Any]) -> list[Task]:
    return [submit_generate(body, base_url="http://testserver", binary=False) for body in bodies]


def serve(tasks: list[Task], batch_tasks: int) -> tuple[list[Task], Recorder]:
    """Run a real worker until every task in ``tasks`` ended; the tasks as they ended."""
    recorder = Recorder()
    worker = EngineWorker(
        engine_factory=build_engine,
        announcer=announce.Announcer(publisher=recorder, webhooks=WebhookSender()),
        name=f"batch-{batch_tasks}",
        poll_seconds=0.2,
        batch_tasks=batch_tasks,
    )
    worker.start()
    try:
        deadline = time.monotonic() + 280
        pks = [task.pk for task in tasks]
        while Task.objects.filter(pk__in=pks).exclude(status__in=ENDED_STATUSES).exists():
            assert time.monotonic() < deadline, "the tasks did not end"
            time.sleep(0.2)
    finally:
        worker.stop()
    return [Task.objects.get(pk=pk) for pk in pks], recorder


def pixels(task: Task, outputs: Path) -> list[np.ndarray]:
    arrays = []
    for relative in task.result:
        with Image.open(outputs / relative) as image:
            arrays.append(np.asarray(image.convert("RGB"), np.int16))
    return arrays


def assert_same_images(a: Task, b: Task, outputs: Path) -> None:
    assert a.seeds == b.seeds
    got, want = pixels(a, outputs), pixels(b, outputs)
    assert len(got) == len(want) > 0
    for x, y in zip(got, want, strict=True):
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 1


def overlapped(first: Task, second: Task) -> bool:
    """Whether ``second`` was claimed before ``first`` ended."""
    assert first.finished_at is not None
    assert second.started_at is not None
    return second.started_at < first.finished_at


def batches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "as one batch" in r.getMessage()]


def test_compatible_tasks_run_as_one_batch_with_their_own_seeds_and_images(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation.worker")
    outputs = settings.FOOOCUS_OUTPUTS_DIR
    alone, _ = serve(queue(CAT, DOG), batch_tasks=1)
    assert batches(caplog) == []
    # One at a time: the second started after the first ended.
    assert not overlapped(alone[0], alone[1])

    together, recorder = serve(queue(CAT, DOG), batch_tasks=2)
    (line,) = batches(caplog)
    assert all(task.task_id in line for task in together)
    assert "batch of 2" in line
    # Both were claimed before either ended: one run, not two.
    assert overlapped(together[0], together[1])
    for batched, single in zip(together, alone, strict=True):
        assert batched.status == TaskStatus.FINISHED, batched.error
        assert batched.worker == "batch-2"
        assert_same_images(batched, single, outputs)
    # Each task keeps its own seed (and so its own image).
    assert together[0].seeds == [3]
    assert together[1].seeds == [11]
    assert np.abs(pixels(together[0], outputs)[0] - pixels(together[1], outputs)[0]).max() > 1
    # Each task heard its own progress, up to its own end.
    for task in together:
        heard = recorder.events[task.task_id]
        steps = [e["message"] for e in heard if e["message"].startswith("Sampling step")]
        assert len(steps) == 4
        progress = [e["progress"] for e in heard]
        assert progress == sorted(progress)
        assert heard[-1]["task_status"] == "finished"


def test_incompatible_tasks_run_one_after_the_other(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation.worker")
    other_steps = {**DOG, "overwrite_step": 3}
    done, _ = serve(queue(CAT, other_steps), batch_tasks=2)
    assert batches(caplog) == []
    assert [task.status for task in done] == [TaskStatus.FINISHED] * 2
    assert not overlapped(done[0], done[1])


def test_stopping_one_task_of_a_batch_stops_only_that_one(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation.worker")
    outputs = settings.FOOOCUS_OUTPUTS_DIR
    (single,), _ = serve(queue(CAT), batch_tasks=1)
    cat, dog = queue(CAT, DOG)
    # Asked before the worker starts: the dog's first poll (its first step) takes it.
    events.control_request(dog.task_id, "stop")
    (cat, dog), recorder = serve([cat, dog], batch_tasks=2)
    assert len(batches(caplog)) == 1
    assert dog.status == TaskStatus.STOP
    assert dog.result == []
    assert recorder.events[dog.task_id][-1]["task_status"] == "stop"
    assert cat.status == TaskStatus.FINISHED, cat.error
    assert_same_images(cat, single, outputs)


def test_a_task_that_fails_in_a_batch_fails_alone(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="generation.worker")
    outputs = settings.FOOOCUS_OUTPUTS_DIR
    (single,), _ = serve(queue(CAT), batch_tasks=1)
    cat, dog = queue(CAT, DOG)
    # A row stored with a format no encoder writes (as by an older version): the dog's image
    # cannot be saved, which only shows once it was sampled in the batch.
    Task.objects.filter(pk=dog.pk).update(req_params={**dog.req_params, "output_format": "bmp"})
    (cat, dog), recorder = serve([cat, dog], batch_tasks=2)
    assert len(batches(caplog)) == 1
    assert dog.status == TaskStatus.FAILED
    assert "unknown output format 'bmp'" in dog.error
    assert dog.result == []
    assert recorder.events[dog.task_id][-1]["task_status"] == "failed"
    assert cat.status == TaskStatus.FINISHED, cat.error
    assert_same_images(cat, single, outputs)
