"""The dashboard's Drift and Model lines tables in real headless Chromium: each device's
drift scores, the one that drifts marked, its PSI over time drawn, the campaign the rule
opened; which device is on which model line, and who refused one and why."""

from __future__ import annotations

import pytest

from aggregator.config import AggregatorConfig
from aggregator.core.models import load_or_create
from aggregator.model_lines import LinesConfig, line_of
from aggregator.store import Store
from aggregator.web import create_app, serve_dashboard
from edge_client.shared.protocol import Status
from edge_client.training import mlp_trainer
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


def test_the_model_lines_table_shows_who_is_on_which_line(tmp_path, browser):  # noqa: F811
    old, new = {"kind": "mlp", "sizes": [8, 6, 3]}, {"kind": "mlp", "sizes": [8, 12, 3]}
    path = tmp_path / "agg.sqlite3"
    store = Store(path)
    for arch in (old, new):
        load_or_create(AggregatorConfig(db_path=path, lines=LinesConfig("new_line")), store,
                       mlp_trainer(arch["sizes"]).get_weights(), arch)
    store.set_devices([(Status("d0", True, model_version=1), 1.0),
                       (Status("d1", True, eligible=False, model_version=0,
                               reason="model refused: version 1: it is 900 bytes, over "
                                      "max_model_bytes 500; serving version 0"), 1.0)])
    store.close()
    server = serve_dashboard(create_app(path, None, None), "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, server.url)
        page.goto(server.url)
        page.wait_for_selector("#lines tbody tr td.warn", timeout=10_000)
        rows = [page.locator("#lines tbody tr").nth(i).locator("td").all_text_contents()
                for i in range(3)]
        assert rows[0] == [line_of(new), "v1–v1", "1", "d0"]
        assert rows[1] == [line_of(old), "v0–v0", "1", "d1"]
        assert rows[2][0] == line_of(old) and rows[2][3].startswith("d1: model refused")
        page.close()
        assert problems == []
    finally:
        server.stop()
