"""``GET /tasks`` and the admin changelist with a big history, on SQLite or PostgreSQL.

Fills a fresh database with N tasks shaped like real ones (the full stored request of about
3 KB, prompts of 6-40 words from a vocabulary of ~300 with a Zipf-like spread, five
performances, six models, 7% failed, 1% canceled, a few hundred waiting, two result paths each,
``created_at`` spread over 90 days), then times, through Django's test client in this process
(the superuser logged in for the admin), each view R times after one warm-up request and prints
the median (p50) and the maximum. Nothing touches the network or the real ``outputs/`` folder.

    .venv/bin/python bench/history_scale.py --tasks 100000 --database sqlite
    .venv/bin/python bench/history_scale.py --tasks 1000000 --database postgres

SQLite goes to a temporary file (``--db PATH`` keeps and reuses one of the right size).
PostgreSQL gets a scratch database ``bench_history_<pid>`` on ``--postgres-url`` (default
``postgresql://postgres@127.0.0.1:5432``), dropped at the end (``--keep`` keeps it).

Filling loads the rows with the secondary indexes, the full-text index and its triggers out of
the way and builds them afterwards (as a restore would), so the schema measured is exactly the
migrated one. PostgreSQL is then ``VACUUM ANALYZE``d, as autovacuum would have done by then.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
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
    "sd_xl_base_1.0_0.9vae.safetensors",
    "playground-v2.5-1024px-aesthetic.fp16.safetensors",
    "ponyDiffusionV6XL.safetensors",
]
VOCABULARY = (  # noqa: SIM905 (a list literal is 300 lines)
    "a an the of in on with at by and under over beside portrait photo painting "
    "illustration render sketch closeup cinematic wide shot view scene landscape city "
    "street harbor forest mountain river lake ocean beach desert castle temple village "
    "market bridge tower lighthouse garden field cave island ruins station train car ship "
    "boat airship robot knight wizard witch dragon cat dog fox wolf owl horse tiger lion "
    "bear rabbit deer bird butterfly girl boy woman man child old young warrior princess "
    "queen king samurai ninja astronaut pilot sailor monk pirate detective chef musician "
    "dancer soldier elf dwarf orc angel demon ghost vampire alien cyborg android mech "
    "spaceship planet moon sun stars galaxy nebula sky clouds rain snow fog storm "
    "lightning sunset sunrise night dusk dawn noon winter summer autumn spring neon golden "
    "silver red blue green purple orange black white pink teal crimson emerald ivory amber "
    "pastel vibrant muted dark bright glowing shiny rusty ancient futuristic medieval "
    "victorian steampunk cyberpunk fantasy surreal minimalist baroque gothic art deco "
    "watercolor oil acrylic charcoal ink pencil digital anime manga comic cartoon "
    "realistic photorealistic hyperrealistic detailed intricate elegant dramatic moody "
    "cozy epic serene mysterious magical lighting volumetric rim soft hard studio natural "
    "bokeh depth field lens 35mm 85mm telephoto macro aerial drone isometric symmetrical "
    "centered trending artstation octane unreal engine highly sharp focus masterpiece best "
    "quality 8k 4k hdr film grain kodak portra fujifilm polaroid vintage retro modern "
    "abstract geometric fractal flowers roses cherry blossoms trees oak pine leaves grass "
    "moss stone marble glass crystal gold copper wood fabric silk leather armor sword "
    "shield bow staff crown mask cloak hood dress suit kimono coffee cup book lantern "
    "candle fire smoke water waves reflection mirror window door stairs rooftop alley cafe "
    "library bedroom kitchen office laboratory factory spaceport battlefield"
).split()


def _zipf_weights(count: int) -> list[float]:
    return [1.0 / (rank + 1) ** 0.9 for rank in range(count)]


def request_template() -> str:
    """The fixed part of a stored request (a full, preset-merged field set), as JSON text
    ending just before the fields that vary per task."""
    fixed = {
        "negative_prompt": "blurry, low quality, watermark, deformed hands",
        "style_selections": ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"],
        "aspect_ratios_selection": "1152*896",
        "image_number": 2,
        "sharpness": 2.0,
        "guidance_scale": 4.0,
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
    return json.dumps(fixed)[:-1]


def generate_rows(count: int, *, span_days: int = 90) -> Any:
    """Yield the rows as tuples of the INSERT's columns (oldest first, ids ascending)."""
    rng = random.Random(1)
    template = request_template()
    weights = _zipf_weights(len(VOCABULARY))
    cumulative = list(__import__("itertools").accumulate(weights))
    now = datetime.now(UTC)
    span = timedelta(days=span_days).total_seconds()
    pending_from = count - min(500, count // 100)
    for index in range(count):
        created = now - timedelta(seconds=span * (count - index) / count)
        prompt = " ".join(rng.choices(VOCABULARY, cum_weights=cumulative, k=rng.randint(6, 40)))
        model, performance = rng.choice(MODELS), rng.choice(PERFORMANCES)
        params = (
            f'{template}, "prompt": {json.dumps(prompt)}, "performance_selection": '
            f'"{performance}", "base_model_name": "{model}", '
            f'"image_seed": {rng.randrange(2**53)}}}'
        )
        roll = rng.random()
        status = "failed" if roll < 0.07 else "canceled" if roll > 0.99 else "finished"
        if index >= pending_from:
            status = "pending"
        ended = status != "pending"
        day = created.strftime("%Y-%m-%d")
        result = [f"{day}/{index}_0.png", f"{day}/{index}_1.png"] if status == "finished" else []
        yield (
            uuid.UUID(int=rng.getrandbits(128)).hex,
            status,
            params,
            created,
            created if ended else None,
            created + timedelta(seconds=20) if ended else None,
            100 if status == "finished" else 0,
            json.dumps(result),
            "[1, 2]" if ended else "[]",
            "CUDA out of memory" if status == "failed" else "",
            "bench" if ended else "",
            1 if ended else 0,
            model,
            performance,
        )


COLUMNS = (
    "task_id, status, req_params, created_at, started_at, finished_at, progress, result, "
    "seeds, error, worker, attempts, model_name, performance, webhook_url, base_url, api_key"
)


def fill_sqlite(count: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'history_task' "
            "AND sql IS NOT NULL AND type IN ('index', 'trigger')"
        )
        derived = cursor.fetchall()
        for kind, name, _ in derived:
            cursor.execute(f'DROP {kind.upper()} "{name}"')

        def sqlite_text(value: Any) -> Any:
            # How Django stores an aware datetime in SQLite: UTC, no offset.
            return str(value.replace(tzinfo=None)) if isinstance(value, datetime) else value

        rows = (
            (*(sqlite_text(value) for value in row), "", "", "") for row in generate_rows(count)
        )
        marks = ", ".join(["%s"] * 17)
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == 10_000:
                cursor.executemany(f"INSERT INTO history_task ({COLUMNS}) VALUES ({marks})", batch)
                batch.clear()
        if batch:
            cursor.executemany(f"INSERT INTO history_task ({COLUMNS}) VALUES ({marks})", batch)
        cursor.execute("DELETE FROM history_task_prompt_fts")
        cursor.execute(
            "INSERT INTO history_task_prompt_fts(rowid, prompt) "
            "SELECT id, COALESCE(json_extract(req_params, '$.prompt'), '') FROM history_task"
        )
        for _, _, sql in derived:
            cursor.execute(sql)
        cursor.execute("ANALYZE")


def fill_postgres(count: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_class c "
            "ON c.relname = i.indexname JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE i.tablename = 'history_task' AND NOT x.indisprimary AND NOT x.indisunique"
        )
        derived = cursor.fetchall()
        for name, _ in derived:
            cursor.execute(f'DROP INDEX "{name}"')
        raw = connection.connection
        with raw.cursor() as pg, pg.copy(f"COPY history_task ({COLUMNS}) FROM STDIN") as copy:
            for row in generate_rows(count):
                copy.write_row((*row, "", "", ""))
        for _, sql in derived:
            cursor.execute(sql)
    connection.connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE history_task")


def timed(get: Callable[[], Any], runs: int) -> tuple[list[float], list[float], list[float], Any]:
    """Wall time, this process's CPU time and the time in SQL statements, per run.

    On a shared machine the wall time includes waiting for a CPU; the CPU time does not (on
    SQLite it includes the database's work, which runs in this process). The SQL time is the
    statements' ``execute`` (PostgreSQL: the whole answer, client-side cursors; SQLite: up to
    the first row, which for these statements is most of the work)."""
    from django.db import connection

    spent: list[float] = []

    def clock(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent.append(time.perf_counter() - start)

    response = get()  # warm-up: templates, caches, the database's pages
    walls, cpus, sqls = [], [], []
    with connection.execute_wrapper(clock):
        for _ in range(runs):
            spent.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            response = get()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            sqls.append(sum(spent))
    return walls, cpus, sqls, response


def _row(label: str, walls: list[float], cpus: list[float], sqls: list[float], rows: int) -> str:
    p50 = statistics.median
    return (
        f"{label:40} {p50(walls) * 1000:7.1f} {max(walls) * 1000:7.1f} "
        f"{p50(cpus) * 1000:7.1f} {p50(sqls) * 1000:7.1f} {rows:6}"
    )


HEADER = f"{'':40} {'p50':>7} {'max':>7} {'cpu p50':>7} {'sql p50':>7} {'rows':>6}  (ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file to create or reuse")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument("--postgres-db", default="", help="reuse this kept PostgreSQL database")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fooocus-bench-history-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "fooocus_site.settings",
            "FOOOCUS_OUTPUTS_DIR": str(home / "outputs"),
            "DJANGO_SECRET_KEY": "bench-only",
            "DJANGO_DEBUG": "0",
        }
    )
    os.environ.pop("FOOOCUS_API_KEYS", None)
    pg_name = args.postgres_db or f"bench_history_{os.getpid()}"
    import psycopg

    if args.database == "postgres":
        if not args.postgres_db:
            with psycopg.connect(f"{args.postgres_url}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
        os.environ["DATABASE_URL"] = f"{args.postgres_url}/{pg_name}"
    else:
        os.environ.pop("DATABASE_URL", None)
        os.environ["FOOOCUS_DB_PATH"] = str((args.db or home / "bench.sqlite3").resolve())
    try:
        run(args)
    finally:
        if args.database == "postgres" and not args.keep and not args.postgres_db:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(f"{args.postgres_url}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.utils import timezone

    from history.models import Task

    setup_test_environment()  # the test client records templates and contexts
    call_command("migrate", verbosity=0)
    if Task.objects.count() != args.tasks:
        Task.objects.all().delete()
        start = time.perf_counter()
        (fill_postgres if args.database == "postgres" else fill_sqlite)(args.tasks)
        print(f"filled {args.tasks:,} tasks in {time.perf_counter() - start:.0f} s", flush=True)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench-only-pw"
    )
    admin = Client()
    admin.force_login(user)
    api = Client()

    now = timezone.now()
    week = {"start_at": (now - timedelta(days=7)).isoformat()}
    past_week = {
        "start_at": (now - timedelta(days=37)).isoformat(),
        "end_at": (now - timedelta(days=30)).isoformat(),
    }
    tasks = [
        ("history page 0", {"query": "history", "page": 0}),
        ("history page 500", {"query": "history", "page": 500}),
        ("history page 5000", {"query": "history", "page": 5000}),
        ("history page 5000, 100 a page", {"query": "history", "page": 5000, "page_size": 100}),
        ("history last 7 days, page 0", {"query": "history", "page": 0, **week}),
        ("history last 7 days, page 500", {"query": "history", "page": 500, **week}),
        ("history 30-37 days ago, page 0", {"query": "history", "page": 0, **past_week}),
        ("history 30-37 days ago, page 500", {"query": "history", "page": 500, **past_week}),
        ("pending page 0", {"query": "pending", "page": 0}),
        ("pending page 20", {"query": "pending", "page": 20}),
        ("all (default)", {}),
    ]
    base = "/admin/history/task/"
    deep = max(1, min(args.tasks // 50 // 2, 10_000))
    failed_deep = 40 if args.tasks >= 100_000 else 1
    admin_cases = [
        ("changelist, first page", {}),
        (f"changelist, page {deep}", {"p": deep}),
        ("status = failed", {"status__exact": "failed"}),
        (f"status = failed, page {failed_deep}", {"status__exact": "failed", "p": failed_deep}),
        ("model filter", {"model": MODELS[1]}),
        ("performance filter", {"performance": "Lightning"}),
        ("model + performance", {"model": MODELS[1], "performance": "Lightning"}),
        ("last 7 days", {"created_at__gte": (now - timedelta(days=7)).isoformat()}),
        ("search 'dragon sunset'", {"q": "dragon sunset"}),
        ("search 'lighthouse'", {"q": "lighthouse"}),
        ("search 'portrait of a'", {"q": "portrait of a"}),
        ("search 'cyber' (prefix)", {"q": "cyber"}),
        ("search a task id", {"q": Task.objects.values_list("task_id", flat=True)[7]}),
    ]
    vendor = "PostgreSQL" if args.database == "postgres" else "SQLite"
    print(f"{Task.objects.count():,} tasks on {vendor}; {args.runs} runs each (after a warm-up)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"GET /tasks\n{HEADER}")
    for label, params in tasks:
        url = f"/tasks?{urlencode(params)}"
        walls, cpus, sqls, response = timed(partial(api.get, url), args.runs)
        assert response.status_code == 200, (url, response.status_code, response.content[:300])
        rows = sum(len(v) for v in response.json().values())
        print(_row(label, walls, cpus, sqls, rows), flush=True)
    print(f"GET {base}\n{HEADER}")
    for label, params in admin_cases:
        url = f"{base}?{urlencode(params)}" if params else base
        walls, cpus, sqls, response = timed(partial(admin.get, url), args.runs)
        assert response.status_code == 200, (url, response.status_code)
        rows = len(response.context["cl"].result_list)
        print(_row(label, walls, cpus, sqls, rows), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
