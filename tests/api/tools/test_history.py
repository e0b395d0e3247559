"""Tool tasks in the history: their kind and answer in the admin and the task object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from generation.presenters import task_object
from history import services
from history.models import Task, TaskKind, TaskStatus

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _folders(settings: Any, tmp_path: Path) -> None:
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"


def _describe_task(text: str) -> Task:
    task = services.task_create(
        req_params={"task_kind": "describe", "image": "/inputs/x.png", "image_type": "Photo"},
        webhook_url="",
        base_url="",
        queue_limit=100,
        kind=TaskKind.DESCRIBE,
    )
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.RUNNING, worker="w")
    services.task_set_text(task=task, text=text, worker="w")
    return services.task_finish(task=task, status=TaskStatus.FINISHED, worker="w")


def test_the_task_object_carries_kind_and_text() -> None:
    task = _describe_task("a lighthouse at dusk")
    body = task_object(task, base="http://testserver")
    assert body["task_kind"] == "describe"
    assert body["describe"] == "a lighthouse at dusk"
    assert body["req_params"]["image"].startswith("http://testserver/inputs/x.png")


def test_set_text_is_fenced_on_the_worker() -> None:
    task = services.task_create(
        req_params={}, webhook_url="", base_url="", queue_limit=100, kind=TaskKind.DESCRIBE
    )
    with pytest.raises(services.TaskLostError):
        services.task_set_text(task=task, text="x", worker="not-running-it")


def test_admin_filters_by_kind_and_shows_the_text(admin_client: Client) -> None:
    task = _describe_task("two cats on a sofa")
    services.task_create(req_params={"prompt": "p"}, webhook_url="", base_url="", queue_limit=100)
    listing = admin_client.get("/admin/history/task/", {"kind__exact": "describe"})
    assert listing.status_code == 200
    assert f"/admin/history/task/{task.pk}/change/" in listing.content.decode()
    assert listing.context["cl"].result_count == 1
    detail = admin_client.get(f"/admin/history/task/{task.pk}/change/")
    assert "two cats on a sofa" in detail.content.decode()
