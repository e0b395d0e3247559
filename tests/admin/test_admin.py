"""The task admin through Django's test client: list, filters, search, detail, deletes."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.utils import timezone
from PIL import Image

from history.files import resolve_output
from history.models import Task, TaskStatus
from tests.admin.factories import make_task

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/history/task/"


def _rows(response: Any) -> list[Task]:
    return list(response.context["cl"].result_list)


def _output_path(relative: str) -> Path:
    day, _, name = relative.partition("/")
    path = resolve_output(day, name)
    assert path is not None, relative
    return path


def test_admin_needs_a_login(client: Client) -> None:
    for url in (CHANGELIST, "/admin/queue/", "/admin/queue/state"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_list_shows_prompt_status_model_performance_and_thumbnails(admin_client: Client) -> None:
    task = make_task(
        TaskStatus.FINISHED, prompt="a lighthouse at dusk", images=2, performance="Lightning"
    )
    make_task(TaskStatus.FAILED, prompt="broken", error="out of memory")
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert "a lighthouse at dusk" in html
    assert "Lightning" in html
    assert "fooocus_demo_tiny.safetensors" in html
    assert 'class="task-status task-failed"' in html
    for relative in task.result:
        thumb = f"/admin/history/task/image/{relative}?size=thumb"
        assert thumb in html
        image = admin_client.get(thumb)
        assert image.status_code == 200
        assert image["Content-Type"] == "image/jpeg"
        with Image.open(io.BytesIO(image.content)) as decoded:
            assert max(decoded.size) <= 128


def test_list_defers_the_request_json(admin_client: Client) -> None:
    make_task(TaskStatus.FINISHED, prompt="deferred")
    response = admin_client.get(CHANGELIST)
    row = _rows(response)[0]
    assert {"req_params", "error"} <= row.get_deferred_fields()
    # The columns the list shows come from SQL, not from loading the JSON afterwards.
    assert row.prompt_text == "deferred"  # type: ignore[attr-defined]


def test_filters_by_status_model_performance_and_date(admin_client: Client) -> None:
    fast = make_task(TaskStatus.FINISHED, performance="Lightning", model="model_a.safetensors")
    slow = make_task(TaskStatus.FAILED, performance="Quality", model="model_b.safetensors")
    old = make_task(TaskStatus.FINISHED, performance="Quality", model="model_a.safetensors")
    Task.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))

    def ids(query: str) -> set[int]:
        response = admin_client.get(f"{CHANGELIST}?{query}")
        assert response.status_code == 200, query
        return {row.pk for row in _rows(response)}

    assert ids("status__exact=failed") == {slow.pk}
    assert ids("performance=Lightning") == {fast.pk}
    assert ids("model=model_a.safetensors") == {fast.pk, old.pk}
    week_ago = timezone.localtime() - timedelta(days=7)
    assert ids(urlencode({"created_at__gte": week_ago})) == {fast.pk, slow.pk}
    # The filter sidebar offers the values in use.
    html = admin_client.get(CHANGELIST).content.decode()
    assert "?model=model_b.safetensors" in html
    assert "?performance=Quality" in html


def test_search_finds_prompts_and_task_ids(admin_client: Client) -> None:
    cat = make_task(TaskStatus.FINISHED, prompt="A Cat on a red sofa")
    dog = make_task(TaskStatus.FINISHED, prompt="a dog in the rain")
    response = admin_client.get(CHANGELIST, {"q": "cat on a RED"})
    assert [row.pk for row in _rows(response)] == [cat.pk]
    response = admin_client.get(CHANGELIST, {"q": dog.task_id})
    assert [row.pk for row in _rows(response)] == [dog.pk]


def test_daily_counts_of_tasks_and_failures(admin_client: Client) -> None:
    make_task(TaskStatus.FINISHED)
    make_task(TaskStatus.FAILED, error="x")
    make_task(TaskStatus.FAILED, error="y")
    yesterday = make_task(TaskStatus.FINISHED)
    Task.objects.filter(pk=yesterday.pk).update(created_at=timezone.now() - timedelta(days=1))
    response = admin_client.get(CHANGELIST)
    counts = {row["day"]: (row["total"], row["failed"]) for row in response.context["daily_counts"]}
    today = timezone.localdate()
    assert counts[today] == (3, 2)
    assert counts[today - timedelta(days=1)] == (1, 0)
    html = response.content.decode()
    assert 'id="daily-counts"' in html
    # Each day links to the list of that day's tasks.
    day_link = re.search(r'<tr data-day="[^"]+">\s*<td><a href="\?([^"]+)"', html)
    assert day_link is not None
    day_rows = admin_client.get(f"{CHANGELIST}?{unescape(day_link.group(1))}")
    assert len(_rows(day_rows)) == 3
    # Filters narrow the counts too.
    filtered = admin_client.get(CHANGELIST, {"status__exact": "failed"})
    assert [(r["total"], r["failed"]) for r in filtered.context["daily_counts"]] == [(2, 2)]


def test_detail_shows_parameters_and_full_size_images(admin_client: Client) -> None:
    task = make_task(TaskStatus.FINISHED, prompt="a lighthouse", negative="blurry", images=2)
    response = admin_client.get(f"{CHANGELIST}{task.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "a lighthouse" in html
    assert "blurry" in html
    assert "<th>performance_selection</th><td>Speed</td>" in html
    assert "<th>image_seed</th><td>1234</td>" in html
    for relative in task.result:
        url = f"/admin/history/task/image/{relative}"
        assert f'<img src="{url}"' in html
        full = admin_client.get(url)
        assert full.status_code == 200
        assert b"".join(full.streaming_content) == _output_path(relative).read_bytes()  # type: ignore[attr-defined]
    # Read-only history: no save buttons, but delete is offered for an ended task.
    assert 'name="_save"' not in html
    assert f"{CHANGELIST}{task.pk}/delete/" in html


def test_delete_one_removes_row_and_files(admin_client: Client) -> None:
    task = make_task(TaskStatus.FINISHED, images=2)
    paths = [_output_path(relative) for relative in task.result]
    response = admin_client.post(f"{CHANGELIST}{task.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert response["Location"] == CHANGELIST
    assert not Task.objects.filter(pk=task.pk).exists()
    assert not any(path.exists() for path in paths)


def test_running_task_cannot_be_deleted(admin_client: Client) -> None:
    task = make_task(TaskStatus.RUNNING)
    response = admin_client.post(f"{CHANGELIST}{task.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Task.objects.filter(pk=task.pk).exists()


def test_delete_selected_action_skips_live_tasks(admin_client: Client) -> None:
    ended = [make_task(TaskStatus.FINISHED, images=1), make_task(TaskStatus.FAILED, error="x")]
    running = make_task(TaskStatus.RUNNING)
    kept = make_task(TaskStatus.FINISHED, images=1)
    paths = [_output_path(relative) for relative in ended[0].result]
    response = admin_client.post(
        CHANGELIST,
        {
            "action": "delete_with_files",
            "_selected_action": [str(t.pk) for t in [*ended, running]],
        },
        follow=True,
    )
    assert response.status_code == 200
    assert set(Task.objects.values_list("pk", flat=True)) == {running.pk, kept.pk}
    assert not any(path.exists() for path in paths)
    assert _output_path(kept.result[0]).exists()
    html = response.content.decode()
    assert "Deleted 2 tasks and 1 files." in html
    assert "Skipped 1 waiting or running tasks." in html


def test_range_delete_counts_then_deletes_only_ended_tasks_in_range(admin_client: Client) -> None:
    now = timezone.now()
    inside = make_task(TaskStatus.FINISHED, images=1)
    inside_running = make_task(TaskStatus.RUNNING)
    outside = make_task(TaskStatus.FINISHED, images=1)
    Task.objects.filter(pk__in=[inside.pk, inside_running.pk]).update(
        created_at=now - timedelta(days=3)
    )
    Task.objects.filter(pk=outside.pk).update(created_at=now - timedelta(days=10))
    url = f"{CHANGELIST}delete-range/"
    local = timezone.localtime(now)
    fmt = "%Y-%m-%dT%H:%M"
    form = {
        "start": (local - timedelta(days=5)).strftime(fmt),
        "end": (local - timedelta(days=1)).strftime(fmt),
    }
    assert admin_client.get(url).status_code == 200
    preview = admin_client.post(url, form)
    assert preview.status_code == 200
    assert preview.context["matching"] == 1
    assert Task.objects.filter(pk=inside.pk).exists()  # counting deletes nothing
    path = _output_path(inside.result[0])
    done = admin_client.post(url, {**form, "confirm": "yes"}, follow=True)
    assert "Deleted 1 tasks and 1 files." in done.content.decode()
    assert set(Task.objects.values_list("pk", flat=True)) == {inside_running.pk, outside.pk}
    assert not path.exists()
    assert _output_path(outside.result[0]).exists()


def test_range_delete_refuses_a_reversed_range(admin_client: Client) -> None:
    make_task(TaskStatus.FINISHED)
    response = admin_client.post(
        f"{CHANGELIST}delete-range/",
        {"start": "2030-01-02T00:00", "end": "2030-01-01T00:00", "confirm": "yes"},
    )
    assert response.status_code == 200
    assert "The start must not be after the end." in response.content.decode()
    assert Task.objects.count() == 1


def test_filtered_lists_count_up_to_a_cap(admin_client: Client, monkeypatch: Any) -> None:
    from history.admin_filters import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "COUNT_CAP", 2)
    for _ in range(4):
        make_task(TaskStatus.FINISHED, prompt="many cats")
    plain = admin_client.get(CHANGELIST).content.decode()
    assert "4 tasks" in plain  # the unfiltered list is counted exactly
    searched = admin_client.get(CHANGELIST, {"q": "cats"})
    assert "2+ tasks" in searched.content.decode()
    assert len(_rows(searched)) == 4
