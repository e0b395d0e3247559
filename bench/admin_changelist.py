"""Admin changelist time with a big history, through Django's test client on SQLite.

Fills a fresh SQLite database with N tasks (default 100,000; realistic ``req_params`` of about
3 KB, two result paths each, spread over 90 days, 7% failed), logs in as a superuser and times
``GET /admin/history/task/`` plain, filtered, searched and paginated: median and max of R runs
after one warm-up request. Nothing touches the network or the real ``outputs/`` folder.

    .venv/bin/python bench/admin_changelist.py [--tasks 100000] [--runs 10] [--db PATH]

With ``--db`` an existing bench database of the right size is reused (filling takes a while).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PERFORMANCES = ["Speed", "Quality", "Extreme Speed", "Lightning", "Hyper-SD"]
MODELS = [
    "juggernautXL_v8Rundiffusion.safetensors",
    "realisticStockPhoto_v20.safetensors",
    "animaPencilXL_v500.safetensors",
]
WORDS = [
    "a",
    "lighthouse",
    "cat",
    "harbor",
    "portrait",
    "of",
    "forest",
    "city",
    "night",
    "neon",
    "castle",
    "dragon",
    "sunset",
]


def req_params(rng: random.Random) -> dict[str, Any]:
    """A request as the API stores it (the full, preset-merged field set)."""
    prompt = " ".join(rng.choices(WORDS, k=rng.randint(4, 30)))
    return {
        "prompt": prompt,
        "negative_prompt": "blurry, low quality, watermark",
        "style_selections": ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"],
        "performance_selection": rng.choice(PERFORMANCES),
        "aspect_ratios_selection": "1152*896",
        "image_number": 2,
        "image_seed": rng.randrange(2**53),
        "sharpness": 2.0,
        "guidance_scale": 4.0,
        "base_model_name": rng.choice(MODELS),
        "refiner_model_name": "None",
        "refiner_switch": 0.5,
        "loras": [{"enabled": True, "model_name": "None", "weight": 1.0}] * 5,
        "uov_method": "Disabled",
        "outpaint_selections": [],
        "outpaint_distance": [0, 0, 0, 0],
        "controlnet_image": [],
        "sampler_name": "dpmpp_2m_sde_gpu",
        "scheduler_name": "karras",
        "vae_name": "Default (model)",
        **{f"overwrite_{k}": -1 for k in ("step", "switch", "width", "height")},
        **{f"adm_scaler_{k}": 0.3 for k in ("positive", "negative", "end")},
        **{f"freeu_{k}": 1.0 for k in ("b1", "b2", "s1", "s2")},
        "inpaint_additional_prompt": "",
        "inpaint_engine": "v2.6",
        "metadata_scheme": "fooocus",
        "output_format": "png",
        "preset": "initial",
        "webhook_url": "",
        # Padding to the size of a real stored request (about 80 fields).
        "extra": {f"field_{i}": f"value {i}" for i in range(60)},
    }


def fill(count: int) -> None:
    from django.utils import timezone

    from history.models import Task, TaskStatus

    rng = random.Random(1)
    now = timezone.now()
    span = timedelta(days=90).total_seconds()
    batch: list[Task] = []
    for index in range(count):
        created = now - timedelta(seconds=span * (count - index) / count)
        roll = rng.random()
        status = TaskStatus.FAILED if roll < 0.07 else TaskStatus.FINISHED
        if roll > 0.99:
            status = TaskStatus.CANCELED
        day = created.strftime("%Y-%m-%d")
        batch.append(
            Task(
                task_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                status=status,
                req_params=req_params(rng),
                created_at=created,
                started_at=created,
                finished_at=created + timedelta(seconds=20),
                progress=100,
                result=[] if status != TaskStatus.FINISHED else [f"{day}/{index}_0.png"] * 2,
                seeds=[1, 2],
                error="CUDA out of memory" if status == TaskStatus.FAILED else "",
                worker="bench",
            )
        )
        if len(batch) == 5000:
            Task.objects.bulk_create(batch)
            batch.clear()
    Task.objects.bulk_create(batch)


def timed(client: Any, url: str, runs: int) -> tuple[float, float, int]:
    response = client.get(url)  # warm-up: templates, caches
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - start)
    assert response.status_code == 200
    return statistics.median(times), max(times), len(response.context["cl"].result_list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--db", type=Path, default=None, help="bench database to create or reuse")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fooocus-bench-admin-"))
    db = args.db or home / "bench.sqlite3"
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "fooocus_site.settings",
            "FOOOCUS_OUTPUTS_DIR": str(home / "outputs"),
            "FOOOCUS_DB_PATH": str(db.resolve()),
            "DJANGO_SECRET_KEY": "bench-only",
            "DJANGO_DEBUG": "0",
        }
    )
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    from history.models import Task

    setup_test_environment()  # the test client records templates and contexts
    call_command("migrate", verbosity=0)
    if Task.objects.count() != args.tasks:
        Task.objects.all().delete()
        start = time.perf_counter()
        fill(args.tasks)
        print(f"filled {args.tasks:,} tasks in {time.perf_counter() - start:.1f} s ({db})")
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench-only-pw"
    )
    client = Client()
    client.force_login(user)

    base = "/admin/history/task/"
    week_ago = urlencode({"created_at__gte": django.utils.timezone.now() - timedelta(days=7)})
    cases = [
        ("changelist, first page", base),
        ("status = failed", f"{base}?status__exact=failed"),
        ("model filter", f"{base}?model={MODELS[1]}"),
        ("performance filter", f"{base}?performance=Lightning"),
        ("last 7 days", f"{base}?{week_ago}"),
        ("search prompt 'dragon sunset'", f"{base}?q=dragon+sunset"),
        ("page 1000 of 2000", f"{base}?p=1000"),
    ]
    size_mb = db.stat().st_size / 1e6
    print(f"{Task.objects.count():,} tasks, SQLite {size_mb:.0f} MB; {args.runs} runs each")
    print(f"{'request':34} {'median':>9} {'max':>9} {'rows':>5}")
    for label, url in cases:
        median, worst, rows = timed(client, url, args.runs)
        print(f"{label:34} {median * 1000:7.0f} ms {worst * 1000:7.0f} ms {rows:5}")


if __name__ == "__main__":
    main()
