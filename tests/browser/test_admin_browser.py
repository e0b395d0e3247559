"""The admin in a real browser against a real server: list, filters, search, detail with images,
the live queue, cancel, and deletes (rows and files gone)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from tests.browser.conftest import admin_login, screenshot
from tests.server import LiveServer, wait_for_task

ALL_IMAGES_LOADED = (
    "sel => { const imgs = Array.from(document.querySelectorAll(sel));"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
)


def generate(server: LiveServer, **body: Any) -> dict[str, Any]:
    """Run one task to its end through the sync JSON mode; return the task object."""
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        json={"performance_selection": "Lightning", **body},
        headers={"Accept": "application/json"},
        timeout=180,
    )
    response.raise_for_status()
    return dict(response.json())


def queue(server: LiveServer, **body: Any) -> str:
    response = requests.post(
        f"{server.url}/v1/engine/generate/", json={**body, "async_process": True}, timeout=60
    )
    response.raise_for_status()
    return str(response.json()["task_id"])


def output_files(server: LiveServer, task: dict[str, Any]) -> list[Path]:
    return [server.outputs / url.split("/outputs/", 1)[1] for url in task["result"]]


def gone(server: LiveServer, task: dict[str, Any]) -> bool:
    response = requests.get(f"{server.url}/tasks/{task['task_id']}", timeout=30)
    return response.status_code == 404 and not any(p.exists() for p in output_files(server, task))


def test_list_filters_search_and_detail(page: Any, browser_server: LiveServer) -> None:
    tag = uuid.uuid4().hex[:8]
    fast = generate(browser_server, prompt=f"red lighthouse {tag}", image_number=2)
    lcm = generate(
        browser_server, prompt=f"blue harbor {tag}", performance_selection="Extreme Speed"
    )
    admin_login(page, browser_server)

    page.wait_for_function(ALL_IMAGES_LOADED, arg="#result_list img.task-thumb")
    list_text = page.inner_text("#result_list")
    assert f"red lighthouse {tag}" in list_text
    assert f"blue harbor {tag}" in list_text
    assert page.is_visible("#daily-counts")
    screenshot(page, "admin-changelist")

    page.fill("#searchbar", f"lighthouse {tag}")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=*")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert f"red lighthouse {tag}" in rows.first.inner_text()

    page.goto(f"{browser_server.url}/admin/history/task/")
    page.locator("#changelist-filter a", has_text="Extreme Speed").click()
    page.wait_for_url("**performance=Extreme*")
    texts = page.locator("#result_list tbody tr").all_inner_texts()
    assert any(f"blue harbor {tag}" in text for text in texts)
    assert not any(f"red lighthouse {tag}" in text for text in texts)

    page.goto(f"{browser_server.url}/admin/history/task/")
    page.locator("#result_list a", has_text=f"red lighthouse {tag}").click()
    page.wait_for_url(f"**/admin/history/task/{fast['id']}/change/")
    page.wait_for_function(ALL_IMAGES_LOADED, arg=".task-image img")
    assert page.locator(".task-image img").count() == 2
    detail = page.inner_text("#content-main")
    assert f"red lighthouse {tag}" in detail
    assert "performance_selection" in detail
    assert "Lightning" in detail
    assert str(fast["seeds"][0]) in detail
    screenshot(page, "admin-detail")
    assert lcm["task_status"] == "finished"


def test_live_queue_shows_progress_and_cancels(page: Any, browser_server: LiveServer) -> None:
    slow_body = {"performance_selection": "Speed", "overwrite_step": 200, "image_number": 4}
    slow = queue(browser_server, prompt="a slow one", **slow_body)
    waiting = queue(browser_server, prompt="waits its turn", performance_selection="Lightning")
    admin_login(page, browser_server)

    # Cancel the waiting task from the task list.
    row = page.locator("#result_list tbody tr", has_text="waits its turn")
    row.locator("button.task-cancel").click()
    page.wait_for_selector("ul.messagelist")
    assert "canceled before it ran" in page.inner_text("ul.messagelist")
    assert wait_for_task(browser_server, waiting)["task_status"] == "canceled"

    # The running task, live: its progress moves and a preview shows.
    page.goto(f"{browser_server.url}/admin/queue/")
    card = f".queue-card[data-task-id='{slow}']"
    page.wait_for_function(
        "sel => { const c = document.querySelector(sel);"
        " return c && c.querySelector('img.queue-preview').src.startsWith('data:image/')"
        " && parseFloat(c.querySelector('.queue-progress span').style.width) > 0; }",
        arg=card,
    )
    first = page.evaluate(
        "sel => parseFloat(document.querySelector(sel + ' .queue-progress span').style.width)",
        card,
    )
    page.wait_for_function(
        "([sel, first]) => parseFloat(document.querySelector(sel + ' .queue-progress span')"
        ".style.width) > first",
        arg=[card, first],
    )
    screenshot(page, "admin-queue")
    page.locator(card).locator("button.task-cancel").click()
    assert wait_for_task(browser_server, slow)["task_status"] == "stop"
    page.wait_for_selector(f"{card}", state="detached")


def test_delete_one_selected_and_range(page: Any, browser_server: LiveServer) -> None:
    tag = uuid.uuid4().hex[:8]
    one, selected, ranged = (
        generate(browser_server, prompt=f"{name} {tag}") for name in ("one", "sel", "rng")
    )
    admin_login(page, browser_server)

    # One, from its detail page.
    page.goto(f"{browser_server.url}/admin/history/task/{one['id']}/change/")
    page.click("a.deletelink")
    page.click("input[type=submit]")  # "Yes, I'm sure"
    page.wait_for_url("**/admin/history/task/")
    assert gone(browser_server, one)

    # Selected, with the list's action.
    page.fill("#searchbar", f"sel {tag}")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=*")
    page.check("#result_list tbody input.action-select")
    page.select_option("select[name=action]", "delete_with_files")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")
    assert "Deleted 1 tasks and 1 files." in page.inner_text("ul.messagelist")
    assert gone(browser_server, selected)

    # A range: count first, then confirm. The server's zone is UTC (FOOOCUS_TIME_ZONE default).
    page.goto(f"{browser_server.url}/admin/history/task/")
    page.click("text=Delete a date range")
    now = datetime.now(UTC)
    page.fill("#id_start", (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#id_end", (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#count-range")
    page.wait_for_selector("#confirm-delete-range")
    assert "will be deleted" in page.inner_text(".range-matching")
    assert requests.get(f"{browser_server.url}/tasks/{ranged['task_id']}", timeout=30).ok
    page.click("#confirm-delete-range")
    page.wait_for_url("**/admin/history/task/")
    assert "Deleted" in page.inner_text("ul.messagelist")
    assert gone(browser_server, ranged)
