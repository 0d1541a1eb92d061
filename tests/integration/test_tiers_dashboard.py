"""Seeing the tree in real headless Chromium (docs/tiers.md): the upper tier's dashboard
shows its Sites table and no upper-tier section; a site's shows its upper tier and no
Sites table."""

from __future__ import annotations

import pytest

from aggregator.store import Store
from aggregator.web import create_app, serve_dashboard
from tests.integration.test_dashboard_browser import _watch, browser  # noqa: F401  (fixture)
from tests.unit.test_tiers_view import fill_site, fill_upper_tier

pytestmark = pytest.mark.integration


def test_the_upper_tier_shows_its_sites(tmp_path, browser):  # noqa: F811
    fill_upper_tier(tmp_path / "top.sqlite3")
    server = serve_dashboard(create_app(tmp_path / "top.sqlite3", None, None), "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, server.url)
        page.goto(server.url)
        page.wait_for_selector("#sites tbody tr", timeout=10_000)
        assert page.is_visible("#sites-section") and not page.is_visible("#upper-section")
        rows = page.locator("#sites tbody tr")
        assert rows.count() == 2  # device-x is a device, not a site
        a, b = (rows.nth(i).locator("td").all_text_contents() for i in range(2))
        assert a[0] == "site-a" and a[1] == "online" and a[3] == "v1" and a[4] == "30"
        assert a[6] == "3" and a[7] == "2" and a[8] == "75 %" and a[9] == "67 %"
        assert b[0] == "site-b" and b[1] == "offline" and b[5] == "pending" and b[8] == "25 %"
        page.close()
        assert problems == []
    finally:
        server.stop()


def test_a_site_shows_its_upper_tier(tmp_path, browser):  # noqa: F811
    fill_site(tmp_path / "site.sqlite3", versions=2)
    server = serve_dashboard(create_app(tmp_path / "site.sqlite3", None, None), "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, server.url)
        page.goto(server.url)
        page.wait_for_selector("#upper tbody tr", timeout=10_000)
        assert page.is_visible("#upper-section") and not page.is_visible("#sites-section")
        cells = page.locator("#upper tbody tr").first.locator("td").all_text_contents()
        assert cells == ["127.0.0.1:18830", "top", "site-a", "v3", "v7", "2 of 2", "4", "40",
                         "yes", "holding"]
        assert page.get_attribute("#upper tbody td.warn", "title") == \
            "its aggregate is with the uplink"
        page.close()
        assert problems == []
    finally:
        server.stop()


def test_a_gateway_of_devices_shows_neither(tmp_path, browser):  # noqa: F811
    fill_upper_tier(tmp_path / "agg.sqlite3")
    Store(tmp_path / "agg.sqlite3").db.execute("DELETE FROM updates WHERE device_id LIKE 'site-%'")
    server = serve_dashboard(create_app(tmp_path / "agg.sqlite3", None, None), "127.0.0.1", 0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, server.url)
        page.goto(server.url)
        page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
        page.wait_for_load_state("networkidle")
        assert not page.is_visible("#sites-section") and not page.is_visible("#upper-section")
        page.close()
        assert problems == []
    finally:
        server.stop()
