"""What keeps the history fast at scale, checked for the answers it gives: the indexed copies of
model and performance, the prompt's full-text index, id-first paging (the same rows as a plain
OFFSET) and the admin's counts.

Run here on SQLite; ``test_the_same_checks_pass_on_postgresql`` runs this module again against a
scratch PostgreSQL database (skipped when none is reachable, failed instead with
``FOOOCUS_REQUIRE_SERVICES=1``, as ``tests/scaled`` does).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from history import selectors, services
from history.admin_counts import daily_counts
from history.admin_filters import CappedCountPaginator, distinct_values
from history.models import ENDED_STATUSES, Task, TaskStatus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _folders(settings: Any, tmp_path: Path) -> None:
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"
    cache.clear()  # the admin's sidebar values are cached (the process's own memory here)


def create(prompt: str = "x", *, model: str = "m.safetensors", performance: str = "Speed") -> Task:
    params = {"prompt": prompt, "base_model_name": model, "performance_selection": performance}
    return services.task_create(req_params=params, webhook_url="", base_url="", queue_limit=10**6)


def search(text: str) -> set[int]:
    return set(selectors.task_filter_prompt(Task.objects.all(), text).values_list("pk", flat=True))


@pytest.mark.django_db
def test_model_and_performance_are_copied_into_columns_on_create() -> None:
    task = create(model="juggernautXL_v8Rundiffusion.safetensors", performance="Lightning")
    task.refresh_from_db()
    assert (task.model_name, task.performance) == (
        "juggernautXL_v8Rundiffusion.safetensors",
        "Lightning",
    )
    bare = services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=10)
    bare.refresh_from_db()
    assert (bare.model_name, bare.performance) == ("", "")


@pytest.mark.django_db
def test_filters_on_the_columns_return_the_right_rows() -> None:
    a_fast = create(model="a.safetensors", performance="Lightning")
    a_slow = create(model="a.safetensors", performance="Quality")
    b_fast = create(model="b.safetensors", performance="Lightning")
    assert set(Task.objects.filter(model_name="a.safetensors")) == {a_fast, a_slow}
    assert set(Task.objects.filter(performance="Lightning")) == {a_fast, b_fast}
    # The sidebar's choices: every value in use, each once, sorted.
    assert distinct_values("model_name") == ["a.safetensors", "b.safetensors"]
    assert distinct_values("performance") == ["Lightning", "Quality"]
    assert distinct_values("model_name", limit=1) == ["a.safetensors"]


@pytest.mark.django_db
def test_search_finds_prompts_by_their_words() -> None:
    cat = create("A Cat on a red Sofa, cinematic lighting")
    dragon = create("an ancient dragon over the harbor at sunset")
    cafe = create("Café terrace at night, oil painting")
    assert search("cat") == {cat.pk}
    assert search("SOFA cat") == {cat.pk}  # every word, in any order and case
    assert search("drag") == {dragon.pk}  # three letters or more also match as a beginning
    assert search("dragon cat") == set()
    assert search("at") == {dragon.pk, cafe.pk}  # a short word matches whole words only
    assert search("CAFÉ") == {cafe.pk}  # case is folded beyond ASCII; accents are kept
    assert search("cafe") == set()
    assert search("sunset!") == {dragon.pk}  # punctuation is not part of a word
    assert search("!!!") == set()
    assert search(dragon.task_id) == {dragon.pk}
    assert search(dragon.task_id.upper()) == {dragon.pk}


@pytest.mark.django_db
def test_search_index_follows_updates_and_deletes() -> None:
    task = create("a lighthouse in the fog")
    Task.objects.filter(pk=task.pk).update(req_params={"prompt": "a windmill in the rain"})
    assert search("lighthouse") == set()
    assert search("windmill") == {task.pk}
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.FINISHED)  # other columns: no change
    assert search("windmill") == {task.pk}
    task.delete()
    assert search("windmill") == set()


@pytest.mark.django_db
def test_the_full_text_index_is_in_place_at_the_latest_migration() -> None:
    """A later migration that makes SQLite rebuild the table would drop the triggers."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            names = {row[0] for row in cursor.fetchall()}
            assert {
                "history_task_prompt_insert",
                "history_task_prompt_delete",
                "history_task_prompt_update",
            } <= names
        else:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'history_task'")
            assert "history_task_prompt_tsv" in {row[0] for row in cursor.fetchall()}


def _mixed_history(count: int = 300) -> None:
    """Tasks in every status, from three keys, with enqueue times out of id order."""
    rng = random.Random(7)
    now = timezone.now()
    statuses = [*ENDED_STATUSES, TaskStatus.PENDING, TaskStatus.RUNNING]
    for index in range(count):
        task = services.task_create(
            req_params={"prompt": f"task {index}"},
            webhook_url="",
            base_url="",
            queue_limit=10**6,
            api_key=rng.choice(["", "key1", "key2"]),
        )
        Task.objects.filter(pk=task.pk).update(
            status=rng.choice(statuses),
            created_at=now - timedelta(minutes=rng.randrange(0, 600)),
        )


@pytest.mark.django_db
@pytest.mark.parametrize("walk_from_newest_below", [20_000, 0])
def test_deep_pages_are_the_rows_of_a_plain_offset(
    monkeypatch: pytest.MonkeyPatch, walk_from_newest_below: int
) -> None:
    # 0: a time range's walk always starts at the range's highest id (as with a big history).
    monkeypatch.setattr(selectors, "WALK_FROM_NEWEST_BELOW", walk_from_newest_below)
    _mixed_history()
    now = timezone.now()
    ranges = [
        (None, None),
        (now - timedelta(minutes=300), now - timedelta(minutes=100)),
        (now - timedelta(minutes=300), None),
        (now + timedelta(minutes=5), now + timedelta(minutes=10)),
    ]
    for api_key in (None, "key1", ""):
        for start, end in ranges:
            scope = Task.objects.all() if api_key is None else Task.objects.filter(api_key=api_key)
            if start is not None:
                scope = scope.filter(created_at__gte=start)
            if end is not None:
                scope = scope.filter(created_at__lte=end)
            ended = list(scope.filter(status__in=ENDED_STATUSES).order_by("-id"))
            waiting = list(scope.filter(status=TaskStatus.PENDING).order_by("id"))
            for page_size in (1, 7, 10, 100):
                for page in range(0, len(ended) // page_size + 2):
                    got = selectors.task_list_history(
                        page=page, page_size=page_size, start=start, end=end, api_key=api_key
                    )
                    assert got == ended[page * page_size : (page + 1) * page_size]
                for page in range(0, len(waiting) // page_size + 2):
                    got = selectors.task_list_pending(
                        page=page, page_size=page_size, start=start, end=end, api_key=api_key
                    )
                    assert got == waiting[page * page_size : (page + 1) * page_size]


@pytest.mark.django_db
def test_paging_keeps_the_querysets_order_annotations_and_deferred_columns() -> None:
    _mixed_history(120)
    from django.db.models.fields.json import KeyTextTransform

    listed = (
        Task.objects.filter(status__in=ENDED_STATUSES)
        .defer("req_params")
        .annotate(prompt_text=KeyTextTransform("prompt", "req_params"))
        .order_by("created_at", "-id")
    )
    plain = list(listed)
    for offset in (0, 5, 37, len(plain) - 3, len(plain) + 5):
        page = selectors.page_rows(listed, offset, 10)
        assert page == plain[offset : offset + 10]
        assert all("req_params" in row.get_deferred_fields() for row in page)
        assert [row.prompt_text for row in page] == [  # type: ignore[attr-defined]
            row.req_params["prompt"] for row in page
        ]
    paginator = CappedCountPaginator(listed, 25)
    assert [list(paginator.page(n)) for n in paginator.page_range] == [
        plain[i : i + 25] for i in range(0, len(plain), 25)
    ]


@pytest.mark.django_db
def test_daily_counts_from_index_ranges_equal_counting_the_rows() -> None:
    _mixed_history(200)
    Task.objects.filter(pk__in=Task.objects.order_by("id").values("pk")[:40]).update(
        created_at=timezone.now() - timedelta(days=3), performance="Lightning"
    )
    for queryset in (
        Task.objects.all(),
        Task.objects.filter(status=TaskStatus.FAILED),
        Task.objects.filter(performance="Lightning"),
        Task.objects.filter(created_at__gte=timezone.now() - timedelta(hours=5)),
    ):
        by_index = daily_counts(queryset)
        by_rows = daily_counts(queryset, indexed=False)
        assert by_index == by_rows
        assert sum(row["total"] for row in by_index) == queryset.count()


@pytest.mark.django_db(transaction=True)
def test_the_data_migration_fills_old_rows_and_the_search_index() -> None:
    executor = MigrationExecutor(connection)
    before = [("history", "0004_task_indexed_columns")]
    try:
        executor.migrate(before)
        old_task = executor.loader.project_state(before).apps.get_model("history", "Task")
        old_task.objects.create(
            task_id="a" * 32,
            req_params={
                "prompt": "an old lighthouse",
                "base_model_name": "old.safetensors",
                "performance_selection": "Quality",
            },
            created_at=timezone.now(),
        )
        old_task.objects.create(task_id="b" * 32, req_params={}, created_at=timezone.now())
    finally:
        call_command("migrate", "history", verbosity=0)
    filled = Task.objects.get(task_id="a" * 32)
    assert (filled.model_name, filled.performance) == ("old.safetensors", "Quality")
    empty = Task.objects.get(task_id="b" * 32)
    assert (empty.model_name, empty.performance) == ("", "")
    assert search("lighthouse") == {filled.pk}


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DATABASE_URL", "") != "", reason="already running on PostgreSQL"
)
def test_the_same_checks_pass_on_postgresql(tmp_path: Path) -> None:
    from tests.cluster import scratch_services, services_problem

    problem = services_problem()
    if problem is not None:
        if os.environ.get("FOOOCUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"FOOOCUS_REQUIRE_SERVICES=1 but {problem}", pytrace=False)
        pytest.skip(f"PostgreSQL not tested: {problem}")
    with scratch_services() as scratch:  # migrates a fresh database: the migrations apply
        # The database only: the cache stays the process's own memory, safe to clear.
        env = {
            **os.environ,
            "DATABASE_URL": scratch.database_url,
            "DJANGO_SECRET_KEY": "tests-only-secret",
        }
        env.pop("REDIS_URL", None)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout, done.stdout[-2000:]


@pytest.mark.django_db
def test_past_days_counts_are_cached_until_a_delete() -> None:
    yesterday = timezone.now() - timedelta(days=1)
    kept, doomed = create(), create()
    Task.objects.filter(pk__in=[kept.pk, doomed.pk]).update(
        created_at=yesterday, status=TaskStatus.FINISHED
    )
    day = timezone.localtime(yesterday).date()

    def yesterday_total() -> int:
        return next(row["total"] for row in daily_counts(Task.objects.all()) if row["day"] == day)

    assert yesterday_total() == 2
    doomed.refresh_from_db()
    services.task_delete(task=doomed)
    assert yesterday_total() == 1
    # Today's counts are never cached.
    create()
    today = timezone.localdate()
    assert [row["total"] for row in daily_counts(Task.objects.all()) if row["day"] == today] == [1]
