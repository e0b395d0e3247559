"""Queued tasks per second with ``FOOOCUS_BATCH_TASKS`` = 1 and = N, side by side, on the demo
preset: a real worker (the one ``serve`` runs) on one shared engine, a scratch SQLite database.

Each round queues ``--tasks`` compatible Lightning tasks (different prompts and seeds) before the
worker starts, then times from the worker's start until every task ended. A warm-up task loads the
models first, so both figures exclude loading. Rounds alternate 1 and N.

    .venv/bin/python bench/batch_tasks.py [--tasks 4] [--batch 4] [--rounds 3] [--steps 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _setup(home: Path) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "FOOOCUS_DB_PATH"):
        os.environ.pop(name, None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="fooocus_site.settings",
        FOOOCUS_OUTPUTS_DIR=str(home / "outputs"),
        FOOOCUS_INPUTS_DIR=str(home / "inputs"),
        FOOOCUS_MODELS_DIR=str(home / "models"),
        FOOOCUS_PRESET="demo",
        FOOOCUS_ALLOW_DOWNLOADS="0",
    )
    from engine.demo.writer import create_demo_models

    create_demo_models(home / "models")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _round(engine: Any, bodies: list[dict[str, Any]], batch: int) -> float:
    """Seconds from the worker's start until every queued task ended."""
    from generation import announce
    from generation.submit import submit_generate
    from generation.webhooks import WebhookSender
    from generation.worker import EngineWorker
    from history.models import ENDED_STATUSES, Task, TaskStatus

    tasks = [submit_generate(b, base_url="http://bench", binary=False) for b in bodies]
    pks = [task.pk for task in tasks]
    worker = EngineWorker(
        engine_factory=lambda: engine,
        announcer=announce.Announcer(publisher=announce.LayerPublisher(), webhooks=WebhookSender()),
        name=f"bench-{batch}",
        poll_seconds=0.05,
        batch_tasks=batch,
    )
    start = time.perf_counter()
    worker.start()
    while Task.objects.filter(pk__in=pks).exclude(status__in=ENDED_STATUSES).exists():
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.stop()
    statuses = set(Task.objects.filter(pk__in=pks).values_list("status", flat=True))
    if statuses != {TaskStatus.FINISHED}:
        raise SystemExit(f"tasks ended {statuses}, not all finished")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="FOOOCUS_BATCH_TASKS to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=0, help="overwrite width/height (0: preset)")
    parser.add_argument("--steps", type=int, default=0, help="overwrite steps (0: Lightning's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _setup(Path(tmp))
        from generation.bootstrap import build_engine

        engine = build_engine()
        base: dict[str, Any] = {"performance_selection": "Lightning"}
        if args.size:
            base.update(overwrite_width=args.size, overwrite_height=args.size)
        if args.steps:
            base["overwrite_step"] = args.steps
        bodies = [
            {**base, "prompt": f"a lighthouse, view {k}", "image_seed": 100 + k}
            for k in range(args.tasks)
        ]
        _round(engine, bodies[:1], 1)  # warm-up: loads the models
        times: dict[int, list[float]] = {1: [], args.batch: []}
        for _ in range(args.rounds):
            for batch in (1, args.batch):
                times[batch].append(_round(engine, bodies, batch))
        print(
            f"{args.tasks} compatible tasks, demo preset, device {engine.device}, "
            f"rounds {args.rounds}"
        )
        print(
            f"{'FOOOCUS_BATCH_TASKS':>20} {'median s':>9} {'tasks/s':>8} {'min s':>7} {'max s':>7}"
        )
        rates = {}
        for batch, seconds in times.items():
            median = statistics.median(seconds)
            rates[batch] = args.tasks / median
            print(
                f"{batch:>20} {median:9.3f} {rates[batch]:8.2f} {min(seconds):7.3f} "
                f"{max(seconds):7.3f}"
            )
        print(f"speed-up (tasks/s, {args.batch} vs 1): {rates[args.batch] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
