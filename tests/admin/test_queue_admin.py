"""The admin's live queue and cancel (generation.admin_views) through Django's test client."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from generation.events import control_take, live_set, stream_event
from history.models import Task, TaskStatus
from tests.admin.factories import make_task

pytestmark = pytest.mark.django_db

PREVIEW = "data:image/jpeg;base64,/9j/AAAA"


def test_state_shows_running_progress_preview_and_pending_in_order(admin_client: Client) -> None:
    running = make_task(TaskStatus.RUNNING, prompt="now painting")
    first, second = make_task(TaskStatus.PENDING, prompt="one"), make_task(TaskStatus.PENDING)
    make_task(TaskStatus.FINISHED)
    live_set(
        running.task_id,
        stream_event(
            task_id=running.task_id,
            status="running",
            progress=42,
            message="Sampling step 5/12, image 1/1 ...",
            preview=PREVIEW,
        ),
    )
    state = admin_client.get("/admin/queue/state").json()
    [shown] = state["running"]
    assert shown["task_id"] == running.task_id
    assert shown["progress"] == 42
    assert shown["preview"] == PREVIEW
    assert shown["message"].startswith("Sampling step 5/12")
    assert shown["prompt"] == "now painting"
    assert [t["task_id"] for t in state["pending"]] == [first.task_id, second.task_id]
    assert state["pending_total"] == 2
    page = admin_client.get("/admin/queue/")
    assert page.status_code == 200
    html = page.content.decode()
    assert PREVIEW in html
    assert 'style="width: 42%"' in html
    assert "one" in html


def test_cancel_pending_from_the_list_never_runs_it(admin_client: Client) -> None:
    task = make_task(TaskStatus.PENDING)
    html = admin_client.get("/admin/history/task/").content.decode()
    cancel_url = f"/admin/queue/cancel/{task.task_id}"
    assert f'formaction="{cancel_url}"' in html
    response = admin_client.post(cancel_url, {"next": "/admin/history/task/"}, follow=True)
    assert response.redirect_chain[-1][0] == "/admin/history/task/"
    assert "was canceled before it ran" in response.content.decode()
    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELED
    assert task.finished_at is not None


def test_cancel_running_asks_the_worker_to_stop(admin_client: Client) -> None:
    task = make_task(TaskStatus.RUNNING)
    response = admin_client.post(
        f"/admin/queue/cancel/{task.task_id}", HTTP_X_REQUESTED_WITH="fetch"
    )
    assert response.json()["action"] == "stopping"
    assert control_take(task.task_id) == "stop"
    # The detail page of a live task offers cancel, not delete.
    html = admin_client.get(f"/admin/history/task/{task.pk}/change/").content.decode()
    assert "Cancel this task" in html
    assert f"/admin/history/task/{task.pk}/delete/" not in html


def test_cancel_is_post_only_and_refuses_unsafe_redirects(admin_client: Client) -> None:
    task = make_task(TaskStatus.PENDING)
    url = f"/admin/queue/cancel/{task.task_id}"
    assert admin_client.get(url).status_code == 405
    response = admin_client.post(url, {"next": "https://evil.example/"})
    assert response["Location"] == "/admin/queue/"
    assert admin_client.post("/admin/queue/cancel/" + "0" * 32).status_code == 404


def test_cancel_needs_the_change_permission(client: Client) -> None:
    viewer = User.objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.force_login(viewer)
    task = make_task(TaskStatus.PENDING)
    assert client.get("/admin/queue/state").status_code == 200
    assert client.post(f"/admin/queue/cancel/{task.task_id}").status_code == 403
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PENDING
