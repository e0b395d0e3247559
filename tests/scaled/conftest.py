"""The scaled-mode tests need the real PostgreSQL and Redis on 127.0.0.1.

Without them the tests are skipped, with the reason in pytest's summary; with
``FOOOCUS_REQUIRE_SERVICES=1`` (set by ``.ci/run``) an unreachable service fails them instead, so
CI can never skip them silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, Services, scratch_services, services_problem
from tests.system.scale_test import webhook_server


@pytest.fixture(scope="session")
def _services_checked() -> None:
    problem = services_problem()
    if problem is None:
        return
    if os.environ.get("FOOOCUS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"FOOOCUS_REQUIRE_SERVICES=1 but {problem}", pytrace=False)
    pytest.skip(f"scaled mode not tested: {problem}")


@pytest.fixture(scope="session")
def services(_services_checked: None) -> Iterator[Services]:
    """This run's own PostgreSQL database (migrated) and Redis key prefix, dropped afterwards."""
    with scratch_services() as scratch:
        yield scratch


@pytest.fixture(scope="session")
def webhooks() -> Iterator[tuple[str, dict[str, list[str]]]]:
    """A webhook receiver every task of the cluster reports to: (its URL, task_id → statuses)."""
    server, received = webhook_server()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


@pytest.fixture(scope="session")
def cluster(
    services: Services,
    demo_models: Path,
    webhooks: tuple[str, dict[str, list[str]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Two web processes (daphne) and two workers (runworker) on this run's services."""
    extra = {"FOOOCUS_WEBHOOK_URL": webhooks[0], "FOOOCUS_ALLOW_PRIVATE_WEBHOOKS": "1"}
    deployment = Cluster(services, tmp_path_factory.mktemp("cluster"), demo_models, extra)
    try:
        deployment.add_web(wait=False)
        deployment.add_web(wait=False)
        deployment.add_worker()
        deployment.add_worker()
        for web in deployment.webs:
            web.wait_http()
        deployment.wait_workers(2)
        yield deployment
    finally:
        deployment.stop_all()
