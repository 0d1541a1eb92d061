"""The dashboard in a real browser: waitress on loopback, Debian's chromium via Playwright.

Fails (never skips) when chromium or playwright is missing, because CI installs both:
`apt-get install chromium` and the `test` extra. Set FEDGE_UPDATE_SCREENSHOT=1 to
rewrite docs/dashboard.png from this run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aggregator.web import DashboardServer, create_app, serve_dashboard
from tests.unit.test_web_api import DEVICES, READ, fill_store

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-quic"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DashboardServer]:
    filled = fill_store(tmp_path / "agg.sqlite3")
    running = serve_dashboard(create_app(filled.path, READ, "admin-x"), "127.0.0.1", 0)
    yield running
    running.stop()


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright; no browser download."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright (the Python package) is missing: pip install -e '.[test]'; "
                    "do not run `playwright install`, this test uses Debian's chromium")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _watch(page, base: str) -> list[str]:
    """Collect console and page errors, failed responses, requests off the gateway."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
    host = urlsplit(base).netloc
    page.on("request", lambda r: urlsplit(r.url).netloc != host
            and problems.append(f"request off the gateway: {r.url}"))
    return problems


def _assert_charts(page) -> None:
    for chart in ("accuracy", "loss"):
        d = page.get_attribute(f"#chart-{chart} path.series", "d")
        assert d and d.startswith("M") and d.count("L") == 9, (chart, d)
        assert page.locator(f"#chart-{chart} circle.dot").count() == 10
    for chart in ("bytes", "updates"):
        bars = page.locator(f"#chart-{chart} rect.bar")
        assert bars.count() == 10
        heights = [float(bars.nth(i).get_attribute("height")) for i in range(10)]
        assert all(h > 0 for h in heights), (chart, heights)
    for chart in ("accuracy", "loss", "bytes", "updates"):
        box = page.locator(f"#chart-{chart}").bounding_box()
        assert box and box["width"] > 200 and box["height"] > 80, (chart, box)


def test_dashboard_with_token_in_the_url(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _watch(page, server.url)
    page.goto(f"{server.url}?token={READ}")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    assert "token" not in page.url  # moved to sessionStorage, out of the address bar
    assert page.text_content("#ov-version") == "v10"
    assert page.text_content("#ov-accuracy") == "0.955"
    assert page.text_content("#ov-devices") == "4 / 5"
    _assert_charts(page)
    ids = page.locator("#devices tbody tr td.id").all_text_contents()
    assert ids == sorted([*DEVICES, "intruder"])
    assert page.locator("#versions tbody tr").count() == 11
    assert page.is_hidden("#login")
    shot = SCREENSHOT if os.environ.get("FEDGE_UPDATE_SCREENSHOT") else tmp_path / "shot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert problems == []


def test_dashboard_asks_for_the_token(server, browser):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#login:not([hidden])", timeout=10_000)
    page.fill("#token", "wrong")
    page.click("#login button[type=submit]")
    page.wait_for_function("document.querySelector('#login-error').textContent.length > 0")
    assert "token" in page.text_content("#login-error")
    page.fill("#token", READ)
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    assert page.locator("#devices tbody tr").count() == len(DEVICES) + 1
    assert page.is_visible("#forget")
