"""A real headless browser (Debian's chromium, driven by Playwright) against a real demo server.

Never downloads a browser: ``.ci/run`` installs the ``chromium`` package when it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import ROOT, LiveServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
# The CI machine is a shared 2-core box that also runs the server and the engine.
TIMEOUT_MS = 90_000
ADMIN_USER, ADMIN_PASSWORD = "admin", "browser-tests-only-pw"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium per test module (module scope: a live Playwright loop would otherwise
    outlast these tests and confuse the async checks of later Django tests)."""
    if not CHROMIUM.exists():
        message = "chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("FOOOCUS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)  # on CI a missing browser is a failure, never a skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    if request.node.stash.get(_FAILED, False):
        # What the browser showed when the test failed: the first thing to look at in CI.
        screenshot(page, f"failed-{request.node.name}")
    context.close()


@pytest.fixture(scope="session")
def browser_server(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[LiveServer]:
    """A demo server of the browser tests' own (their deletes must not touch the API tests'
    history), with an admin user made by ``createsuperuser`` as the README says."""
    live = start_server(tmp_path_factory.mktemp("browser-server"), demo_models)
    env = {
        **live.env,
        "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
    }
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield live
    live.stop(signal.SIGTERM)


def screenshot(page: Any, name: str) -> Path:
    """Keep a screenshot under tests/artifacts/ (ignored by git) for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def admin_login(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/admin/login/?next=/admin/history/task/")
    page.fill("#id_username", ADMIN_USER)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/history/task/")
