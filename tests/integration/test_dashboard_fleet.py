"""The dashboard over a fleet's store, in a real browser: waitress on loopback, Debian's
chromium via Playwright. 2,000 devices (benchmarks/dashboard_store.py, the store the
fleet benchmark serves at 10,000): the per-device tables show a page and say how many
there are, and the page stays responsive while it polls. No timing assertions: the
figures are in benchmarks/dashboard_fleet.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.web import DashboardServer, create_app, serve_dashboard
from benchmarks.dashboard_store import build_fleet_store, device_name
from tests.integration.test_dashboard_browser import _watch, browser  # noqa: F401

pytestmark = pytest.mark.integration
DEVICES = 2_000
SHOWN = 200  # DEVICE_ROWS in dashboard.js


@pytest.fixture
def fleet_server(tmp_path: Path) -> Iterator[DashboardServer]:
    build_fleet_store(tmp_path / "agg.sqlite3", DEVICES, versions=12)
    running = serve_dashboard(create_app(tmp_path / "agg.sqlite3", None, None),
                              "127.0.0.1", 0)
    yield running
    running.stop()


def test_the_dashboard_shows_a_page_of_a_large_fleet(fleet_server, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _watch(page, fleet_server.url)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url[len(fleet_server.url):]))
    page.goto(fleet_server.url)
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    page.wait_for_selector("#drift-shown:not(:empty)", timeout=20_000)
    assert page.text_content("#ov-devices") == f"{DEVICES * 9 // 10:,} / {DEVICES:,}"
    ids = page.locator("#devices tbody tr td.id").all_text_contents()
    assert ids == [device_name(i) for i in range(SHOWN)]
    assert page.text_content("#devices-shown").startswith(f"Showing {SHOWN} of 2,000 devices")
    assert page.locator("#drift tbody tr").count() == SHOWN
    assert page.text_content("#drift-shown").startswith(
        f"Showing {SHOWN} of 2,000 devices with drift reports")
    assert page.locator("#personal tbody tr").count() == SHOWN
    assert "of 2,000 devices" in page.text_content("#personal-shown")
    # Versions: how many devices made each, not their names; fairness: the top shares.
    newest = page.locator("#versions tbody tr").first.locator("td").all_text_contents()
    assert newest[0] == "v12" and newest[11] == f"{DEVICES // 10} devices", newest
    shares = page.locator("#fairness tbody tr").first.locator("td").nth(6).text_content()
    assert shares.count("%") == 5 and shares.endswith(f"and {DEVICES // 10 - 5} more")
    line = page.locator("#lines tbody tr").first.locator("td").all_text_contents()
    assert line[2] == "2,000" and line[3].endswith(f"and {DEVICES - SHOWN:,} more"), line
    # Every per-device request asked for a page.
    for endpoint in ("api/devices", "api/drift", "api/personal", "api/lines"):
        assert any(a.startswith(f"{endpoint}?limit={SHOWN}") for a in asked), (endpoint, asked)
    # A page of rows, not a fleet's: the DOM stays small (271,000 nodes at 10,000 devices
    # before the tables were paged, and seconds of a blocked main thread per poll).
    assert page.locator("*").count() < 20_000
    page.close()
    assert problems == []
