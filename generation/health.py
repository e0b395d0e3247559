"""Health and metrics for load balancers and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

Every figure comes from the database (or the shared channel layer), so any web process answers
for the whole deployment, whichever process a probe or a scrape reaches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import status

from generation.access import AuthError, authenticate, require_scope
from generation.auth import request_headers
from history import selectors

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the task duration histogram: demo tasks on a CPU up to SDXL batches.
DURATION_BUCKETS = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
CHANNEL_CHECK_SECONDS = 2.0


def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive and serving requests (touches nothing else)."""
    return HttpResponse("ok", content_type="text/plain")


def _database_state() -> dict[str, Any]:
    close_old_connections()
    try:
        workers = selectors.worker_list(within_seconds=settings.FOOOCUS_WORKER_LEASE_SECONDS)
        return {"database": "ok", "workers": len(workers), "queue_depth": selectors.queue_depth()}
    except Exception as exc:
        logger.warning("readiness: database check failed", exc_info=True)
        return {"database": f"error: {exc.__class__.__name__}: {exc}", "workers": 0}
    finally:
        close_old_connections()


async def _channel_layer_state() -> str:
    """Send a message to a fresh channel of our own and read it back."""
    layer = get_channel_layer()
    if layer is None:
        return "error: no channel layer configured"
    try:
        channel = await layer.new_channel()
        await asyncio.wait_for(layer.send(channel, {"type": "ready.check"}), CHANNEL_CHECK_SECONDS)
        message = await asyncio.wait_for(layer.receive(channel), CHANNEL_CHECK_SECONDS)
    except Exception as exc:
        logger.warning("readiness: channel layer check failed", exc_info=True)
        return f"error: {exc.__class__.__name__}: {exc}"
    return "ok" if message.get("type") == "ready.check" else "error: wrong message"


async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready to take work: the database and the channel layer answer, and at least one worker
    is alive. 503 otherwise, with what is wrong."""
    state = await sync_to_async(_database_state, thread_sensitive=False)()
    state["channel_layer"] = await _channel_layer_state()
    ready = state["database"] == "ok" and state["channel_layer"] == "ok" and state["workers"] > 0
    state["ready"] = ready
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JsonResponse(state, status=code)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    """Prometheus text format 0.0.4: a HELP and TYPE line per metric family, then samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
        self.lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def metrics_text() -> str:
    """The deployment's metrics in Prometheus text format."""
    out = _Exposition()
    counts = selectors.task_counts_by_status()
    out.family("fooocus_queue_depth", "gauge", "Tasks waiting in the queue.")
    out.sample("fooocus_queue_depth", counts["pending"])
    out.family("fooocus_tasks", "gauge", "Tasks in the database by status.")
    for name, count in counts.items():
        out.sample("fooocus_tasks", count, status=name)

    histogram = selectors.task_duration_histogram(DURATION_BUCKETS)
    out.family("fooocus_task_duration_seconds", "histogram", "Run time of ended tasks.")
    for bound, count in histogram.buckets:
        out.sample("fooocus_task_duration_seconds_bucket", count, le=f"{bound:g}")
    out.sample("fooocus_task_duration_seconds_bucket", histogram.count, le="+Inf")
    out.sample("fooocus_task_duration_seconds_sum", round(histogram.total_seconds, 3))
    out.sample("fooocus_task_duration_seconds_count", histogram.count)

    lease = settings.FOOOCUS_WORKER_LEASE_SECONDS
    workers = selectors.worker_list()
    out.family("fooocus_workers_live", "gauge", "Workers whose heartbeat is within the lease.")
    out.sample("fooocus_workers_live", sum(1 for w in workers if w.age_seconds <= lease))
    out.family("fooocus_worker_heartbeat_age_seconds", "gauge", "Seconds since a worker's beat.")
    for w in workers:
        out.sample("fooocus_worker_heartbeat_age_seconds", round(w.age_seconds, 3), worker=w.name)
    out.family(
        "fooocus_worker_heartbeat_timestamp_seconds", "gauge", "Unix time of a worker's last beat."
    )
    for w in workers:
        out.sample(
            "fooocus_worker_heartbeat_timestamp_seconds",
            round(w.beat_at.timestamp(), 3),
            worker=w.name,
        )
    out.family(
        "fooocus_worker_steps_total", "counter", "Sampling steps a worker ran since it started."
    )
    for w in workers:
        out.sample("fooocus_worker_steps_total", w.steps_total, worker=w.name, device=w.device)
    out.family("fooocus_worker_step_rate", "gauge", "Sampling steps per second over the last beat.")
    for w in workers:
        out.sample("fooocus_worker_step_rate", w.step_rate, worker=w.name, device=w.device)
    out.family("fooocus_worker_busy", "gauge", "1 while a worker runs a task.")
    for w in workers:
        out.sample("fooocus_worker_busy", 1 if w.current_task_id else 0, worker=w.name)

    out.family("fooocus_webhook_failures_total", "counter", "Webhook attempts that failed.")
    out.sample("fooocus_webhook_failures_total", selectors.webhook_failure_count())
    out.family("fooocus_database_vendor_info", "gauge", "The database backend in use.")
    out.sample("fooocus_database_vendor_info", 1, vendor=connection.vendor)
    return out.text()


def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text exposition format.

    Once API keys are on it needs an ``admin`` key (Prometheus sends it as a bearer token):
    task counts and worker names are not for everybody."""
    try:
        caller = authenticate(request_headers(request))
        require_scope(caller, "admin")
    except AuthError as exc:
        return JsonResponse({"detail": exc.message}, status=exc.status)
    return HttpResponse(metrics_text(), content_type="text/plain; version=0.0.4; charset=utf-8")
