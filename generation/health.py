"""Health and metrics for load balancers and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

Every figure comes from the database (or the shared channel layer), so any web process answers
for the whole deployment, whichever process a probe or a scrape reaches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from rest_framework import status

from generation.access import authenticate, require_scope
from generation.auth import request_headers
from generation.errors import ApiError, json_error_response
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


class DeploymentCollector(Collector):
    """Reads the deployment's figures from the database at each scrape.

    Nothing is counted in this process's memory: every web process answers for all of them, so
    a multi-process (or multi-machine) deployment reports the same values whichever process a
    scrape reaches, with no shared metrics directory.
    """

    def collect(self) -> Iterator[Metric]:
        counts = selectors.task_counts_by_status()
        yield GaugeMetricFamily(
            "fooocus_queue_depth", "Tasks waiting in the queue.", value=counts["pending"]
        )
        tasks = GaugeMetricFamily(
            "fooocus_tasks", "Tasks in the database by status.", labels=["status"]
        )
        for name, count in counts.items():
            tasks.add_metric([name], count)
        yield tasks

        histogram = selectors.task_duration_histogram(DURATION_BUCKETS)
        yield HistogramMetricFamily(
            "fooocus_task_duration_seconds",
            "Run time of ended tasks.",
            buckets=[
                *((f"{bound:g}", count) for bound, count in histogram.buckets),
                ("+Inf", histogram.count),
            ],
            sum_value=round(histogram.total_seconds, 3),
        )
        yield from _worker_metrics(selectors.worker_list())

        yield CounterMetricFamily(
            "fooocus_webhook_failures_total",
            "Webhook attempts that failed.",
            value=selectors.webhook_failure_count(),
        )
        yield InfoMetricFamily(
            "fooocus_database_vendor",
            "The database backend in use.",
            value={"vendor": connection.vendor},
        )


def _worker_metrics(workers: list[selectors.WorkerState]) -> Iterator[Metric]:
    lease = settings.FOOOCUS_WORKER_LEASE_SECONDS
    yield GaugeMetricFamily(
        "fooocus_workers_live",
        "Workers whose heartbeat is within the lease.",
        value=sum(1 for w in workers if w.age_seconds <= lease),
    )
    age = GaugeMetricFamily(
        "fooocus_worker_heartbeat_age_seconds", "Seconds since a worker's beat.", labels=["worker"]
    )
    beat = GaugeMetricFamily(
        "fooocus_worker_heartbeat_timestamp_seconds",
        "Unix time of a worker's last beat.",
        labels=["worker"],
    )
    steps = CounterMetricFamily(
        "fooocus_worker_steps",
        "Sampling steps a worker ran since it started.",
        labels=["worker", "device"],
    )
    rate = GaugeMetricFamily(
        "fooocus_worker_step_rate",
        "Sampling steps per second over the last beat.",
        labels=["worker", "device"],
    )
    busy = GaugeMetricFamily(
        "fooocus_worker_busy", "1 while a worker runs a task.", labels=["worker"]
    )
    for w in workers:
        age.add_metric([w.name], round(w.age_seconds, 3))
        beat.add_metric([w.name], round(w.beat_at.timestamp(), 3))
        steps.add_metric([w.name, w.device], w.steps_total)
        rate.add_metric([w.name, w.device], w.step_rate)
        busy.add_metric([w.name], 1 if w.current_task_id else 0)
    yield from (age, beat, steps, rate, busy)


# The registry /metrics exposes: only the deployment's figures (no per-process default
# collectors, whose values would depend on which process answered).
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DeploymentCollector())


def metrics_text() -> str:
    """The deployment's metrics in Prometheus text format 0.0.4."""
    return generate_latest(REGISTRY).decode()


def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text exposition format.

    Once API keys are on it needs an ``admin`` key (Prometheus sends it as a bearer token):
    task counts and worker names are not for everybody."""
    try:
        caller = authenticate(request_headers(request))
        require_scope(caller, "admin")
    except ApiError as exc:
        return json_error_response(exc)
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
