"""The bundled example page in a real browser: it streams a generation and shows its errors."""

from __future__ import annotations

import io
from typing import Any

import requests
from PIL import Image

from tests.browser.conftest import screenshot
from tests.server import LiveServer

# Records what the page shows while a task streams, so the test can check the bar moved and a
# preview arrived without racing the events (no sleeps).
WATCH = """() => {
  const bar = document.getElementById('progress-bar');
  const preview = document.getElementById('preview');
  window.__seen = { progress: [], previews: 0 };
  new MutationObserver(() => {
    window.__seen.progress.push(Number(bar.getAttribute('aria-valuenow')));
  }).observe(bar, { attributes: true, attributeFilter: ['aria-valuenow'] });
  new MutationObserver(() => {
    if (preview.src.startsWith('data:image/')) window.__seen.previews += 1;
  }).observe(preview, { attributes: true, attributeFilter: ['src'] });
}"""


def _open(page: Any, server: LiveServer) -> list[str]:
    """Open the page and wait for the choices it fetches; return every URL it requested."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server.url}/")
    page.wait_for_function("document.querySelectorAll('#performance option').length > 1")
    page.wait_for_function("document.querySelectorAll('#styles input').length > 1")
    return requested


def _smallest_aspect(server: LiveServer) -> str:
    ratios = requests.get(f"{server.url}/v1/engines/options", timeout=30).json()["aspect_ratios"]

    def area(ratio: str) -> int:
        width, height = ratio.replace("×", "*").split("*")
        return int(width) * int(height)

    return min(ratios, key=area)


def test_generate_streams_progress_preview_and_results(
    page: Any, browser_server: LiveServer
) -> None:
    requested = _open(page, browser_server)
    page.evaluate(WATCH)
    page.fill("#prompt", "a lighthouse at dusk")
    page.fill("#negative", "blurry")
    page.select_option("#performance", "Speed")
    page.select_option("#aspect", _smallest_aspect(browser_server))
    page.fill("#number", "2")
    page.click("#advanced summary")
    page.fill("#steps", "40")
    page.click("#generate")
    page.wait_for_selector("#status.finished", timeout=180_000)

    seen = page.evaluate("window.__seen")
    moving = [value for value in seen["progress"] if 0 < value < 100]
    assert len(set(moving)) >= 3, seen["progress"]
    assert moving == sorted(moving), "the bar never goes back"
    assert seen["previews"] >= 1
    assert page.get_attribute("#progress-bar", "aria-valuenow") == "100"
    assert page.inner_text("#message") == "Finished"
    assert not page.is_visible("#error")

    thumbs = page.locator("#results a")
    assert thumbs.count() == 2
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#results img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    screenshot(page, "example-page")

    full_url = thumbs.first.get_attribute("href")
    assert full_url is not None
    assert "/outputs/" in full_url
    thumbs.first.click()
    page.wait_for_selector("#lightbox[open]")
    page.wait_for_function("document.getElementById('lightbox-image').naturalWidth > 0")
    shown = page.evaluate(
        "() => { const i = document.getElementById('lightbox-image');"
        " return [i.src, i.naturalWidth, i.naturalHeight]; }"
    )
    with Image.open(io.BytesIO(requests.get(full_url, timeout=30).content)) as original:
        assert shown == [full_url, original.width, original.height]
    assert page.is_visible("#lightbox-image")
    assert f"{original.width} × {original.height} px" in page.inner_text("#lightbox-caption")
    screenshot(page, "example-page-full-size")
    page.click("#lightbox-close")
    assert not page.is_visible("#lightbox")

    # Self-contained: everything it loaded came from this server (or is inline data).
    foreign = [u for u in requested if not u.startswith((browser_server.url, "data:"))]
    assert foreign == []


def test_refused_requests_show_their_errors(page: Any, browser_server: LiveServer) -> None:
    _open(page, browser_server)
    page.click("#advanced summary")
    # Out of range for the server (the browser's own checks would stop e.g. steps=500 earlier).
    page.fill("#seed", "-5")
    page.click("#generate")
    page.wait_for_selector("#error.shown")
    error = page.inner_text("#error")
    assert "refused the request (422)" in error
    assert "image_seed: Ensure this value is greater than or equal to -1." in error
    assert page.inner_text("#message") == "Nothing was queued."
    assert page.is_enabled("#generate")

    # A style list gone stale (the server's styles folder changed after the page loaded).
    page.fill("#seed", "")
    page.evaluate(
        """() => { const box = document.createElement('input');
        box.type = 'checkbox'; box.value = 'No Such Style'; box.checked = true;
        document.getElementById('styles').appendChild(box); }"""
    )
    page.click("#generate")
    page.wait_for_function(
        "document.getElementById('error').innerText.includes('style_selections')"
    )
    error = page.inner_text("#error")
    assert "style_selections:" in error
    assert "No Such Style" in error
    assert "image_seed" not in error
    screenshot(page, "example-page-error")


def test_stopping_a_task_shows_that_it_ended_early(page: Any, browser_server: LiveServer) -> None:
    _open(page, browser_server)
    page.fill("#prompt", "a very slow painting")
    page.select_option("#performance", "Speed")
    page.select_option("#aspect", _smallest_aspect(browser_server))
    page.fill("#number", "4")
    page.click("#advanced summary")
    page.fill("#steps", "200")
    page.click("#generate")
    page.wait_for_function(
        "Number(document.getElementById('progress-bar').getAttribute('aria-valuenow')) > 0"
    )
    page.click("#stop")
    page.wait_for_selector("#status.stop")
    assert "ended early (stop)" in page.inner_text("#error")
    assert page.is_enabled("#generate")
