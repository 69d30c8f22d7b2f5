"""Headless-Chromium harness for the self-contained HTML report.

Opens a local HTML file in Debian's `chromium` (driven by the `playwright` Python package, never
its downloaded browsers) and reports what a reader's browser would see: console errors, page
errors and failed requests, every request that would leave the file (blocked, never fetched: a
self-contained report makes none), the size of every image, the title, and a full-page screenshot.

    from tests.browser import chromium_browser, open_page  # noqa: F401  (chromium_browser is a fixture)

    def test_report_opens(chromium_browser, tmp_path):
        page = open_page(report_html, tmp_path / "report.png", browser=chromium_browser)
        assert page.console_errors == [] and page.external_requests == []
        assert page.images and all(i["natural_width"] > 0 for i in page.images)

Where Chromium or playwright is missing, `chromium_or_skip()` (and the fixture) skip with the
reason and the fix; a Chromium that is installed but fails to start is an error, not a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium launcher (`apt-get install chromium`, as .ci/run does)."""

CHROMIUM_ENV = "CLUSTERLAKE_CHROMIUM"
"""Set to another Chromium executable to use it instead of /usr/bin/chromium."""

# Headless, as root (no sandbox), no GPU, and no network of its own: without the
# background-networking/component/sync flags Chromium phones home and, on a closed network,
# fills the log with refused connections. --disable-dev-shm-usage: small /dev/shm in containers.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

SKIP_REASON = (
    "headless Chromium is not available: {what}; install Debian's chromium package "
    "(apt-get install chromium), as .ci/run does, and the `playwright` Python package "
    "(pip install -c constraints.txt -e '.[test]'; never `playwright install`)"
)

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

# Every <img>: where it points (first characters only: data URIs are long) and its decoded size.
_IMAGES_JS = """() => Array.from(document.images).map(img => ({
    src_prefix: (img.currentSrc || img.getAttribute('src') || '').slice(0, 80),
    natural_width: img.naturalWidth,
    natural_height: img.naturalHeight,
    complete: img.complete,
}))"""


@dataclass
class PageReport:
    """What the browser saw when it opened the file."""

    console_errors: list[str] = field(default_factory=list)
    """console messages of type error, uncaught page errors and failed requests, in order."""
    external_requests: list[str] = field(default_factory=list)
    """URLs of every request that was not file:/data: (all blocked, none fetched)."""
    images: list[dict[str, Any]] = field(default_factory=list)
    """One dict per <img>: src_prefix, natural_width, natural_height, complete."""
    title: str = ""
    screenshot: Path | None = None


def find_chromium() -> str | None:
    """The Chromium executable: $CLUSTERLAKE_CHROMIUM, /usr/bin/chromium, or `chromium` on PATH."""
    for candidate in (os.environ.get(CHROMIUM_ENV), CHROMIUM, shutil.which("chromium")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_or_skip() -> str:
    """The Chromium executable path; skips the calling test (with the reason) if it or playwright is missing."""
    exe = find_chromium()
    if exe is None:
        pytest.skip(SKIP_REASON.format(what=f"{CHROMIUM} not found"))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(SKIP_REASON.format(what=f"the playwright package cannot be imported ({exc})"))
    return exe


@contextmanager
def launch_chromium(executable: str | None = None) -> Iterator[Any]:
    """A playwright Browser running headless Debian Chromium (fresh, empty profile); closed on exit."""
    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """One headless Chromium per test module (skips with the reason where it is not installed)."""
    exe = chromium_or_skip()
    with launch_chromium(exe) as browser:
        yield browser


def _is_local(url: str) -> bool:
    return url.startswith(LOCAL_SCHEMES)


def open_page(
    html_path: str | os.PathLike,
    screenshot_path: str | os.PathLike,
    *,
    browser: Any = None,
    timeout_ms: float = 30_000,
    viewport: tuple[int, int] = (1280, 900),
) -> PageReport:
    """Open `html_path` in headless Chromium, wait for load and every image, save a full-page screenshot.

    Requests other than file:/data: are recorded in `external_requests` and aborted
    (net::ERR_BLOCKED_BY_CLIENT, so they also show as failed requests in `console_errors`);
    WebSockets are recorded and answered by a mock, never connected. `browser` is a playwright
    Browser (e.g. the `chromium_browser` fixture); without one, a Chromium is launched for this
    call only (not from inside another running playwright, e.g. next to the fixture).
    """
    if browser is None:
        with launch_chromium(chromium_or_skip()) as own:
            return open_page(html_path, screenshot_path, browser=own, timeout_ms=timeout_ms, viewport=viewport)

    html = Path(html_path).resolve()
    if not html.is_file():
        raise FileNotFoundError(html)
    shot = Path(screenshot_path)
    shot.parent.mkdir(parents=True, exist_ok=True)
    report = PageReport()

    def record(url: str) -> None:
        if url not in report.external_requests:
            report.external_requests.append(url)

    def on_route(route):
        url = route.request.url
        if _is_local(url):
            route.continue_()
        else:
            record(url)
            route.abort("blockedbyclient")

    def on_web_socket(ws):
        # Never connect_to_server(): the page talks to a mock, nothing leaves. (No ws.close()
        # here: from a handler it deadlocks playwright's sync API.)
        record(ws.url)

    def on_request(request):  # also fires for requests the router sees; recorded once
        if not _is_local(request.url):
            record(request.url)

    def on_console(msg):
        if msg.type == "error":
            loc = msg.location or {}
            where = f" ({loc.get('url', '')[:80]}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
            report.console_errors.append(f"console.error: {msg.text}{where}")

    def on_page_error(exc):
        report.console_errors.append(f"pageerror: {exc}")

    def on_request_failed(request):
        report.console_errors.append(f"requestfailed: {request.url[:200]} ({request.failure})")

    context = browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]},
        service_workers="block",
        java_script_enabled=True,
    )
    try:
        context.set_default_timeout(timeout_ms)
        context.route("**/*", on_route)
        context.route_web_socket("**/*", on_web_socket)
        page = context.new_page()
        page.on("request", on_request)
        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        page.on("requestfailed", on_request_failed)

        page.goto(html.as_uri(), wait_until="load", timeout=timeout_ms)
        page.wait_for_function(
            "() => Array.from(document.images).every(img => img.complete)", timeout=timeout_ms
        )
        report.images = page.evaluate(_IMAGES_JS)
        report.title = page.title()
        page.screenshot(path=str(shot), full_page=True, timeout=timeout_ms)
        report.screenshot = shot
    finally:
        context.close()
    return report
