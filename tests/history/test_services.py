"""The task services and selectors against the real database (SQLite here)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from PIL import Image

from history import selectors, services
from history.files import input_image_store, output_image_write, resolve_input, resolve_output
from history.models import Task, TaskStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _folders(settings: pytest.FixtureRequest, tmp_path: Path) -> None:
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"  # type: ignore[attr-defined]
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"  # type: ignore[attr-defined]


def make(status: str = TaskStatus.PENDING, **fields: object) -> Task:
    task = services.task_create(
        req_params={"prompt": "x"}, webhook_url="", base_url="", queue_limit=1000
    )
    if status != TaskStatus.PENDING or fields:
        Task.objects.filter(pk=task.pk).update(status=status, **fields)
        task.refresh_from_db()
    return task


def test_create_refuses_beyond_the_queue_limit() -> None:
    services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=1)
    with pytest.raises(services.QueueFullError):
        services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=1)
    assert Task.objects.count() == 1


def test_claim_takes_the_oldest_pending_once() -> None:
    first, second = make(), make()
    make(TaskStatus.FINISHED)
    claimed = services.task_claim_next(worker="w1")
    assert claimed is not None
    assert claimed.pk == first.pk
    assert claimed.status == TaskStatus.RUNNING
    assert claimed.worker == "w1"
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    again = services.task_claim_next(worker="w2")
    assert again is not None
    assert again.pk == second.pk
    assert services.task_claim_next(worker="w3") is None


def test_claim_these_takes_only_the_named_tasks_still_pending() -> None:
    first, second, third = make(), make(), make()
    taken = services.task_claim_next(worker="w1")
    assert taken is not None
    assert taken.pk == first.pk
    ended = make(TaskStatus.FINISHED)
    claimed = services.task_claim_these(worker="w2", pks=[third.pk, first.pk, ended.pk])
    assert [task.pk for task in claimed] == [third.pk]
    (row,) = claimed
    assert (row.status, row.worker, row.attempts) == (TaskStatus.RUNNING, "w2", 1)
    assert row.started_at is not None
    # The first stays w1's; the second was not named and still waits.
    assert Task.objects.get(pk=first.pk).worker == "w1"
    assert Task.objects.get(pk=second.pk).status == TaskStatus.PENDING
    assert services.task_claim_these(worker="w3", pks=[third.pk]) == []
    assert services.task_claim_these(worker="w3", pks=[]) == []


def test_pending_generate_tasks_are_the_oldest_waiting_generate_tasks() -> None:
    first, _, third = make(), make(TaskStatus.RUNNING), make()
    make(kind="describe")
    assert [t.pk for t in selectors.pending_generate_tasks(limit=5)] == [first.pk, third.pk]
    assert [t.pk for t in selectors.pending_generate_tasks(limit=1)] == [first.pk]


def test_add_image_records_each_result_at_once() -> None:
    task = make(TaskStatus.RUNNING)
    services.task_add_image(task=task, relative_path="2024-01-01/a.png", seed=5)
    services.task_add_image(task=task, relative_path="2024-01-01/b.png", seed=6)
    task.refresh_from_db()
    assert task.result == ["2024-01-01/a.png", "2024-01-01/b.png"]
    assert task.seeds == [5, 6]


def test_finish_refuses_a_non_ending_status() -> None:
    task = make(TaskStatus.RUNNING)
    with pytest.raises(ValueError, match="ending status"):
        services.task_finish(task=task, status=TaskStatus.PENDING)
    done = services.task_finish(task=task, status=TaskStatus.FAILED, error="boom")
    assert done.status == TaskStatus.FAILED
    assert done.error == "boom"
    assert done.finished_at


def test_cancel_outcomes() -> None:
    pending, running, ended = make(), make(TaskStatus.RUNNING), make(TaskStatus.FINISHED)
    outcome = services.task_cancel(task_id=pending.task_id)
    assert outcome is not None
    assert outcome.action == "canceled"
    pending.refresh_from_db()
    assert pending.status == TaskStatus.CANCELED
    outcome = services.task_cancel(task_id=running.task_id)
    assert outcome is not None
    assert outcome.action == "stopping"
    outcome = services.task_cancel(task_id=ended.task_id)
    assert outcome is not None
    assert outcome.action == "ended"
    assert services.task_cancel(task_id="0" * 32) is None


def test_delete_range_keeps_waiting_and_running_and_removes_files() -> None:
    path = output_image_write(data=b"png", extension="png", save_name=None, index=0)
    ended = make(TaskStatus.FINISHED, result=[path])
    waiting, running = make(), make(TaskStatus.RUNNING)
    now = timezone.now()
    outcome = services.task_delete_range(
        start=now - timedelta(hours=1), end=now + timedelta(hours=1)
    )
    assert (outcome.deleted, outcome.files_deleted) == (1, 1)
    assert not Task.objects.filter(pk=ended.pk).exists()
    assert set(Task.objects.values_list("pk", flat=True)) == {waiting.pk, running.pk}
    day, name = path.split("/")
    assert resolve_output(day, name) is None


def test_selectors_order_and_paginate() -> None:
    tasks = [make(TaskStatus.FINISHED) for _ in range(5)]
    pending = [make() for _ in range(3)]
    history = selectors.task_list_history(page=0, page_size=2)
    assert [t.pk for t in history] == [tasks[4].pk, tasks[3].pk]
    assert [t.pk for t in selectors.task_list_history(page=2, page_size=2)] == [tasks[0].pk]
    assert [t.pk for t in selectors.task_list_pending(page=0, page_size=10)] == [
        t.pk for t in pending
    ]
    assert selectors.queue_depth() == 3


def test_inputs_are_stored_once_by_content_hash() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    first = input_image_store(red)
    second = input_image_store(red.copy())
    assert first == second
    assert len(first) == len("0" * 64 + ".png")
    assert resolve_input(first) is not None
    assert input_image_store(Image.new("RGB", (8, 8), (0, 255, 0))) != first


@pytest.mark.parametrize("name", ["../x.png", "..", ".secret_key", "a/b.png", ""])
def test_unsafe_input_names_resolve_to_nothing(name: str) -> None:
    assert resolve_input(name) is None


def test_save_name_collisions_do_not_overwrite() -> None:
    one = output_image_write(data=b"1", extension="png", save_name="client", index=0)
    two = output_image_write(data=b"2", extension="png", save_name="client", index=0)
    assert one.endswith("/client-0.png")
    assert one != two
