"""The dashboard's Drift table in real headless Chromium: each device's scores, the one
that drifts marked, its PSI over time drawn, and the campaign the rule opened."""

from __future__ import annotations

import pytest

from aggregator.web import create_app, serve_dashboard
from tests.integration.test_dashboard_browser import _watch, browser  # noqa: F401  (fixture)
from tests.unit.test_drift_web import _filled

pytestmark = pytest.mark.integration


def test_the_drift_table_shows_devices_history_and_the_campaign(tmp_path, browser):  # noqa: F811
    _filled(tmp_path / "agg.sqlite3")
    server = serve_dashboard(create_app(tmp_path / "agg.sqlite3", None, None), "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, server.url)
        page.goto(server.url)
        page.wait_for_selector("#drift tbody tr td.warn", timeout=10_000)
        rows = page.locator("#drift tbody tr")
        assert rows.count() == 2
        cells = {rows.nth(i).locator("td").first.text_content():
                 rows.nth(i).locator("td").all_text_contents() for i in range(2)}
        assert cells["dev-1"][2] == "3.500" and cells["dev-1"][6] == "drifting"
        assert cells["dev-0"][5] == "0.900 (40)" and cells["dev-0"][6] == ""
        line = page.get_attribute("#drift tbody tr:nth-child(2) svg.spark polyline", "points")
        assert line and len(line.split()) == 2  # two reports of dev-1: before, after
        summary = page.text_content("#drift-summary")
        assert "PSI max > 0.25" in summary and "campaign 1 at v4 → v12 (open): dev-1" in summary
        page.close()
        assert problems == []
    finally:
        server.stop()
