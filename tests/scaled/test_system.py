"""A smaller run of the system test (``tests/system/scale_test.py``) on the session's cluster:
a third worker joins, clients load it in all three result modes, a busy worker is killed and
restarted, a web process restarts, and every task is accounted for."""

from __future__ import annotations

import pytest

from tests.cluster import Cluster
from tests.system.scale_test import LoadConfig, run_load

pytestmark = pytest.mark.e2e


def test_load_with_a_killed_worker_and_a_restarted_web(
    cluster: Cluster, webhooks: tuple[str, dict[str, list[str]]]
) -> None:
    # Earlier tests stopped workers: bring the deployment to three live workers.
    for worker in cluster.workers:
        if not worker.alive:
            worker.start()
    while len(cluster.workers) < 3:
        cluster.add_worker()
    cluster.wait_workers(3)
    config = LoadConfig(tasks=36, clients=8, worker_kills=1, web_restarts=1, cancel_every=4)
    report = run_load(cluster, config, webhooks[1])
    summary = report.summary()
    print(summary)
    assert report.problems == [], "\n".join(report.problems) + "\n" + cluster.logs()
    assert summary["worker_kills"] == 1
    assert summary["web_restarts"] == 1
    assert summary["statuses"].get("finished", 0) >= 30
    assert summary["modes"] == {"async": 12, "stream": 12, "binary": 12}
    # Each task ended once and said so once.
    assert all(len(report.webhooks.get(task_id, [])) <= 1 for task_id in report.rows)
