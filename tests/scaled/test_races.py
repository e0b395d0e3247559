"""Races on the real PostgreSQL: claiming, the global queue limit, and sweeps of dead workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import Services, scratch_services
from tests.server import ROOT


@pytest.fixture(scope="module")
def own_services(_services_checked: None) -> Iterator[Services]:
    """A database of their own: the session's cluster would run (and sweep) these tasks."""
    with scratch_services() as scratch:
        yield scratch


def race(services: Services, mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.scaled.race", mode],
        cwd=ROOT,
        env={**os.environ, **services.env(), "DJANGO_SECRET_KEY": "tests-only-secret"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_eight_claimers_never_get_the_same_task(own_services: Services) -> None:
    result = race(own_services, "claim")
    claims = [task_id for got in result["claimed"] for task_id in got]
    assert len(claims) == 200
    assert len(set(claims)) == 200, [t for t, n in Counter(claims).items() if n > 1]
    # A real race: several threads got work.
    assert sum(1 for got in result["claimed"] if got) >= 2
    for index, got in enumerate(result["claimed"]):
        for task_id in got:
            assert result["rows"][task_id] == ["running", f"w{index}", 1]


def test_queue_limit_is_global_under_concurrent_submits(own_services: Services) -> None:
    result = race(own_services, "enqueue")
    outcomes = Counter(o for per_thread in result["outcomes"] for o in per_thread)
    assert outcomes == {"queued": 10, "full": 8 * 4 - 10}
    assert result["pending"] == 10


def test_concurrent_sweeps_take_back_each_task_once(own_services: Services) -> None:
    result = race(own_services, "sweep")
    requeued = [t for sweep in result["sweeps"] for t in sweep["requeued"]]
    failed = [t for sweep in result["sweeps"] for t in sweep["failed"]]
    assert len(requeued) == len(set(requeued)) == 20
    assert len(failed) == len(set(failed)) == 10
    rows = result["rows"]
    assert all(rows[t][:2] == ["pending", ""] for t in requeued)
    assert all(rows[t][0] == "failed" and "stopped answering" in rows[t][2] for t in failed)
    # The live worker's task is left alone.
    assert rows[result["kept"]][:2] == ["running", "alive"]
