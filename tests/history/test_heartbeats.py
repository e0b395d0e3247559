"""Worker heartbeats, taking back the tasks of dead workers, and the fence on a worker's writes
(SQLite here; ``tests/scaled`` runs the same services on PostgreSQL under races)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from history import selectors, services
from history.models import Task, TaskStatus, WorkerHeartbeat
from tests.metrics import families, value

pytestmark = pytest.mark.django_db(transaction=True)


def running(worker: str, attempts: int = 1, **fields: object) -> Task:
    task = services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=1000)
    Task.objects.filter(pk=task.pk).update(
        status=TaskStatus.RUNNING, worker=worker, attempts=attempts, **fields
    )
    task.refresh_from_db()
    return task


def beat(name: str, seconds_ago: float = 0) -> None:
    services.worker_beat(name=name, hostname="h", pid=1, device="cpu")
    if seconds_ago:
        WorkerHeartbeat.objects.filter(name=name).update(
            beat_at=timezone.now() - timedelta(seconds=seconds_ago)
        )


def test_a_lapsed_heartbeat_puts_the_task_back_with_its_images() -> None:
    beat("alive")
    beat("gone", seconds_ago=60)
    kept = running("alive")
    orphan = running("gone", result=["2026-01-01/a.png"], seeds=[7])
    unknown = running("never-registered")
    outcome = services.task_requeue_lapsed(lease_seconds=30, max_attempts=3)
    assert sorted(outcome.requeued) == sorted([orphan.task_id, unknown.task_id])
    orphan.refresh_from_db()
    assert (orphan.status, orphan.worker, orphan.result, orphan.seeds) == (
        TaskStatus.PENDING,
        "",
        ["2026-01-01/a.png"],
        [7],
    )
    kept.refresh_from_db()
    assert (kept.status, kept.worker) == (TaskStatus.RUNNING, "alive")
    # Claiming it again counts a second attempt.
    again = services.task_claim_next(worker="alive")
    assert again is not None
    assert again.attempts == 2


def test_past_the_attempt_limit_the_task_fails_with_the_reason() -> None:
    task = running("gone", attempts=3)
    outcome = services.task_requeue_lapsed(lease_seconds=30, max_attempts=3)
    assert [t.task_id for t in outcome.failed] == [task.task_id]
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert "stopped answering (gone)" in task.error
    assert "tried 3 times" in task.error


def test_a_worker_named_dead_loses_its_task_before_the_lease() -> None:
    beat("restarted")
    task = running("restarted")
    assert services.task_requeue_lapsed(lease_seconds=30, max_attempts=3).requeued == []
    outcome = services.task_requeue_lapsed(
        lease_seconds=30, max_attempts=3, dead_workers=["restarted"]
    )
    assert outcome.requeued == [task.task_id]


def test_a_worker_that_lost_its_task_cannot_write_to_it() -> None:
    task = running("slow")
    services.task_add_image(task=task, relative_path="d/1.png", seed=1, worker="slow")
    services.task_requeue_lapsed(lease_seconds=30, max_attempts=3)
    with pytest.raises(services.TaskLostError):
        services.task_add_image(task=task, relative_path="d/2.png", seed=2, worker="slow")
    with pytest.raises(services.TaskLostError):
        services.task_finish(task=task, status=TaskStatus.FINISHED, worker="slow")
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.PENDING, ["d/1.png"])


def test_a_clean_shutdown_gives_the_attempt_back() -> None:
    task = services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=10)
    claimed = services.task_claim_next(worker="w")
    assert claimed is not None
    assert claimed.attempts == 1
    assert services.task_release(task=claimed, worker="w") is True
    task.refresh_from_db()
    assert (task.status, task.attempts, task.worker) == (TaskStatus.PENDING, 0, "")
    assert services.task_release(task=claimed, worker="w") is False


def test_forget_and_prune_remove_workers() -> None:
    beat("a")
    beat("b", seconds_ago=1000)
    assert [w.name for w in selectors.worker_list(within_seconds=30)] == ["a"]
    assert services.worker_prune(older_than_seconds=300) == 1
    services.worker_forget(name="a")
    assert selectors.worker_list() == []


def test_health_endpoints_on_the_embedded_settings() -> None:
    client = Client()
    assert client.get("/healthz").content == b"ok"
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["workers"] == 0
    assert not_ready.json()["channel_layer"] == "ok"
    beat("w1")
    ready = client.get("/readyz").json()
    assert ready["ready"] is True
    assert ready["database"] == "ok"
    running("w1", started_at=timezone.now() - timedelta(seconds=3))
    done = running("w1", started_at=timezone.now() - timedelta(seconds=4))
    services.task_finish(task=done, status=TaskStatus.FINISHED)
    answer = client.get("/metrics")
    assert answer["Content-Type"].startswith("text/plain; version=0.0.4")
    text = answer.content.decode()
    assert value(text, "fooocus_workers_live") == 1
    assert value(text, "fooocus_tasks", status="running") == 1
    assert value(text, "fooocus_tasks", status="finished") == 1
    assert value(text, "fooocus_task_duration_seconds_bucket", le="2.5") == 0
    assert value(text, "fooocus_task_duration_seconds_bucket", le="5") == 1
    assert value(text, "fooocus_task_duration_seconds_count") == 1
    assert value(text, "fooocus_worker_steps_total", worker="w1", device="cpu") == 0
    # The metric families and their types, as Prometheus reads them (the parser drops the
    # `_total` and `_info` suffixes from family names).
    assert families(text) == {
        "fooocus_queue_depth": "gauge",
        "fooocus_tasks": "gauge",
        "fooocus_task_duration_seconds": "histogram",
        "fooocus_workers_live": "gauge",
        "fooocus_worker_heartbeat_age_seconds": "gauge",
        "fooocus_worker_heartbeat_timestamp_seconds": "gauge",
        "fooocus_worker_steps": "counter",
        "fooocus_worker_step_rate": "gauge",
        "fooocus_worker_busy": "gauge",
        "fooocus_webhook_failures": "counter",
        "fooocus_database_vendor_info": "gauge",
    }
    assert value(text, "fooocus_database_vendor_info", vendor="sqlite") == 1


def test_a_batching_worker_beats_for_every_task_it_holds() -> None:
    """With FOOOCUS_BATCH_TASKS a worker holds several tasks: the beat reports them all, and each
    one taken back is told apart from those still held."""
    from generation.announce import Announcer, LayerPublisher
    from generation.heartbeat import Heartbeat, WorkerStatus
    from generation.webhooks import WebhookSender

    lead, kept, taken = running("w1"), running("w1"), running("w1")
    lost: list[str] = []
    heartbeat = Heartbeat(
        name="w1",
        status=lambda: WorkerStatus(lead.task_id, 7, others=(kept.task_id, taken.task_id)),
        on_lost=lost.append,
        announcer=Announcer(publisher=LayerPublisher(), webhooks=WebhookSender()),
    )
    Task.objects.filter(pk=taken.pk).update(status=TaskStatus.PENDING, worker="")
    held = heartbeat.beat()
    assert held == (lead.task_id, kept.task_id, taken.task_id)
    assert WorkerHeartbeat.objects.get(name="w1").current_task_id == lead.task_id
    heartbeat.report_lost(held)
    assert lost == [taken.task_id]
