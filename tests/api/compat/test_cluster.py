"""Fooocus-API's jobs in the scaled-out mode: two web processes (daphne) and one worker on the
real PostgreSQL and Redis. A job submitted on one web process is queried, listed, streamed to its
end and stopped through the other (Fooocus-API's job ids were per process, its issue #92)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.compat.helpers import LIGHTNING, SLOW
from tests.cluster import Cluster, scratch_services, services_problem

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[Cluster]:
    problem = services_problem()
    if problem is not None:
        if os.environ.get("FOOOCUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"FOOOCUS_REQUIRE_SERVICES=1 but {problem}", pytrace=False)
        pytest.skip(f"scaled mode not tested: {problem}")
    with scratch_services() as services:
        deployment = Cluster(services, tmp_path_factory.mktemp("compat-cluster"), demo_models)
        try:
            deployment.add_web(wait=False)
            deployment.add_web(wait=False)
            deployment.add_worker()
            for web in deployment.webs:
                web.wait_http()
            deployment.wait_workers(1)
            yield deployment
        finally:
            deployment.stop_all()


def job(web_url: str, job_id: str) -> dict[str, object]:
    response = requests.get(
        f"{web_url}/v1/generation/query-job", params={"job_id": job_id}, timeout=10
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_stage(web_url: str, job_id: str, stages: tuple[str, ...]) -> dict[str, object]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        body = job(web_url, job_id)
        if body["job_stage"] in stages:
            return body
        time.sleep(0.1)
    raise TimeoutError(f"{job_id} never reached {stages}")


def test_a_job_is_found_stopped_and_listed_on_another_web_process(cluster: Cluster) -> None:
    first, second = cluster.webs
    submitted = requests.post(
        f"{first.url}/v1/generation/text-to-image",
        json={**SLOW, "image_number": 1, "async_process": True},
        timeout=60,
    )
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["job_id"]
    running = wait_stage(second.url, job_id, ("RUNNING",))
    assert running["job_type"] == "Text to Image"
    queue = requests.get(f"{second.url}/v1/generation/job-queue", timeout=10).json()
    assert queue["last_job_id"] == job_id
    # Stop through the other web process: the worker hears it through Redis.
    requests.post(f"{second.url}/v1/generation/stop", timeout=10)
    ended = wait_stage(first.url, job_id, ("SUCCESS", "ERROR"))
    assert ended["job_status"] == "Stopped"

    # A synchronous request on one process; its job is in the other's history.
    answer = requests.post(f"{second.url}/v1/generation/text-to-image", json=LIGHTNING, timeout=180)
    results = answer.json()
    assert results[0]["finish_reason"] == "SUCCESS"
    history = requests.get(f"{first.url}/v1/generation/job-history", timeout=10).json()
    assert history["history"][0]["job_id"] == str(uuid.UUID(hex=answer.headers["X-Task-Id"]))
    assert history["history"][0]["is_finished"] is True
    assert requests.get(results[0]["url"].replace(second.url, first.url), timeout=10).ok
