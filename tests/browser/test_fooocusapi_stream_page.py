"""A page of our own that talks to the server as FooocusAPI's example page does (both
``async_process`` and ``stream_output`` set): in a real browser it shows progress and a preview."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from tests.browser.conftest import screenshot
from tests.server import LiveServer

PAGE = Path(__file__).parent / "pages" / "fooocusapi_stream.html"


def _smallest_aspect(server: LiveServer) -> str:
    ratios = requests.get(f"{server.url}/v1/engines/options", timeout=30).json()["aspect_ratios"]
    return str(
        min(ratios, key=lambda r: int(r.replace("×", "*").split("*")[0]) * int(r.split("*")[-1]))
    )


def test_fooocusapi_style_page_shows_progress_and_a_preview(
    page: Any, browser_server: LiveServer
) -> None:
    # Served at the server's origin, as FooocusAPI's page is served next to its API.
    url = f"{browser_server.url}/__tests__/fooocusapi_stream.html"
    page.route(url, lambda route: route.fulfill(body=PAGE.read_text(), content_type="text/html"))
    page.goto(url)
    params = {
        "performance_selection": "Speed",
        "overwrite_step": 8,
        "aspect_ratios_selection": _smallest_aspect(browser_server),
    }
    page.evaluate("(p) => { document.body.dataset.params = p; }", json.dumps(params))
    page.click("#generate")
    page.wait_for_selector("body.done", timeout=180_000)

    state = page.evaluate("window.__state")
    moving = [value for value in state["progress"] if 0 < value < 100]
    assert len(set(moving)) >= 3, state["progress"]
    assert moving == sorted(moving)
    assert state["previews"] >= 1
    assert state["progress"][-1] == 100
    assert page.inner_text("#message") == "Finished"
    assert page.inner_text("#error") == ""
    page.wait_for_function(
        "() => { const i = document.querySelector('#results img');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    screenshot(page, "fooocusapi-stream-page")
