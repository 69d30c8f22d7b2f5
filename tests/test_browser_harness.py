"""The headless-Chromium harness (tests/browser.py) can fail: it sees script errors, external
requests (and blocks them) and broken images, and passes a good self-contained page."""

from __future__ import annotations

import base64
import io
import struct
import sys

import pytest

from tests import browser as harness
from tests.browser import chromium_browser, open_page  # noqa: F401  (fixture: one Chromium per module)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _figure_png() -> bytes:
    """A small chart as the report will embed it: matplotlib Agg, 200x150 px."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1, 2, 3], [1, 3, 2, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _page(tmp_path, body: str, title: str = "harness") -> str:
    html = tmp_path / "page.html"
    html.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:1em} .tall{height:2000px;background:#eef}</style>"
        f"</head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return html


def test_good_page_has_no_errors_and_sized_images(chromium_browser, tmp_path):
    png = _figure_png()
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    html = _page(tmp_path, f"<h1>Run report</h1><img alt='chart' src='{uri}'><div class='tall'></div>", "Run 42")
    shot = tmp_path / "shots" / "good.png"

    page = open_page(html, shot, browser=chromium_browser)

    assert page.console_errors == []
    assert page.external_requests == []
    assert page.title == "Run 42"
    assert len(page.images) == 1
    img = page.images[0]
    assert img["complete"] and img["src_prefix"].startswith("data:image/png;base64,")
    assert (img["natural_width"], img["natural_height"]) == (200, 150)
    assert page.screenshot == shot and shot.stat().st_size > 0
    width, height = _png_size(shot)
    assert width > 0 and height >= 2000  # full page, not just the 900 px viewport


def test_script_errors_are_reported(chromium_browser, tmp_path):
    html = _page(
        tmp_path,
        "<p>x</p><script>console.error('logged-harness-7');</script>"
        "<script>throw new Error('boom-harness-42');</script>",
    )
    page = open_page(html, tmp_path / "err.png", browser=chromium_browser)

    assert any("boom-harness-42" in e and e.startswith("pageerror") for e in page.console_errors), page.console_errors
    assert any("logged-harness-7" in e and e.startswith("console.error") for e in page.console_errors)
    assert (tmp_path / "err.png").stat().st_size > 0  # still screenshots the page


def test_external_image_is_recorded_and_blocked(chromium_browser, tmp_path):
    html = _page(tmp_path, "<img alt='remote' src='https://example.com/x.png'>")
    page = open_page(html, tmp_path / "ext.png", browser=chromium_browser)

    assert page.external_requests == ["https://example.com/x.png"]
    # aborted by the harness's router (net::ERR_BLOCKED_BY_CLIENT), not fetched nor a network error
    assert any("example.com/x.png" in e and "ERR_BLOCKED_BY_CLIENT" in e for e in page.console_errors), page.console_errors
    assert len(page.images) == 1
    assert page.images[0]["complete"] and page.images[0]["natural_width"] == 0


def test_other_external_requests_are_recorded(chromium_browser, tmp_path):
    html = _page(
        tmp_path,
        "<link rel='stylesheet' href='http://cdn.example.org/style.css'>"
        "<script>fetch('https://api.example.net/data.json').catch(() => {});"
        "new WebSocket('wss://ws.example.com/live');</script>",
    )
    page = open_page(html, tmp_path / "ext2.png", browser=chromium_browser)

    assert "http://cdn.example.org/style.css" in page.external_requests
    assert "https://api.example.net/data.json" in page.external_requests
    assert "wss://ws.example.com/live" in page.external_requests


def test_broken_data_uri_image_has_zero_width(chromium_browser, tmp_path):
    html = _page(tmp_path, "<img alt='broken' src='data:image/png;base64,AAAAnotapng'>")
    page = open_page(html, tmp_path / "broken.png", browser=chromium_browser)

    assert page.external_requests == []
    assert len(page.images) == 1
    assert page.images[0]["complete"] and page.images[0]["natural_width"] == 0


def test_missing_chromium_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(harness, "find_chromium", lambda: None)
    with pytest.raises(pytest.skip.Exception) as skipped:
        harness.chromium_or_skip()
    reason = str(skipped.value)
    assert "/usr/bin/chromium not found" in reason and "apt-get install chromium" in reason
    assert ".ci/run" in reason


def test_missing_playwright_skips_with_the_reason(monkeypatch):
    monkeypatch.setattr(harness, "find_chromium", lambda: "/usr/bin/chromium")
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import raises ImportError
    with pytest.raises(pytest.skip.Exception) as skipped:
        harness.chromium_or_skip()
    assert "playwright package cannot be imported" in str(skipped.value)


def test_missing_html_file_is_an_error(chromium_browser, tmp_path):
    with pytest.raises(FileNotFoundError):
        open_page(tmp_path / "nope.html", tmp_path / "nope.png", browser=chromium_browser)
