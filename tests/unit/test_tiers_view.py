"""aggregator/tier_view.py's views of the tree: each site's contribution on the upper tier,
and on a site where its upper tier is and whether the site holds its rounds for it."""

from __future__ import annotations

from pathlib import Path

from aggregator.core.upper import UPPER_NOTE, UpperLink
from aggregator.states import UpdateState
from aggregator.status import fleet_status
from aggregator.store import Store
from aggregator.tier_view import sites, upper
from aggregator.upper_config import UpperConfig
from edge_client.shared.protocol import Status, Update, encode
from fedge.status_cli import render


def fill_upper_tier(path: Path) -> None:
    """Two sites: site-a gave two aggregates in versions (30 + 30 samples), site-b one
    (20 samples) and a pending one; plus a plain device, which is no site."""
    store = Store(path)
    given = [("site-a", 0, 30, UpdateState.AGGREGATED), ("site-a", 1, 30, UpdateState.AGGREGATED),
             ("site-b", 0, 20, UpdateState.AGGREGATED), ("site-b", 1, 25, UpdateState.PENDING),
             ("device-x", 0, 5, UpdateState.AGGREGATED)]
    for n, (name, base, samples, state) in enumerate(given):
        metrics = {"site_updates": 3, "site_versions": 1} if name.startswith("site") else {}
        u = Update(device_id=name, task_id=f"t-{n}", nonce=f"n-{n}", base_version=base,
                   num_samples=samples, tensors={}, metrics=metrics)
        store.add_update(u, encode(u), state)
    store.set_devices([(Status("site-a", True, model_version=2), 1.0),
                       (Status("site-b", False, model_version=1), 1.0)])
    store.close()


def fill_site(path: Path, *, asked: bool = True, versions: int = 1) -> None:
    store = Store(path)
    UpperLink(UpperConfig(enabled=True, port=18830, federation="top", site_id="site-a",
                          every_versions=2), store)
    store.set_note(UPPER_NOTE, {"upper_version": 3, "site_version": 7, "asked": asked,
                                "versions": versions, "samples": 40, "updates": 4})
    store.close()


def test_each_site_says_its_share_of_samples_and_aggregates(tmp_path):
    fill_upper_tier(tmp_path / "top.sqlite3")
    a, b = sites(Store(tmp_path / "top.sqlite3"))
    keys = ("site", "online", "aggregates_used", "samples_used")
    assert [a[k] for k in keys] == ["site-a", True, 2, 60]
    assert [b[k] for k in keys] == ["site-b", False, 1, 20]
    assert a["sample_share"] == 0.75 and b["sample_share"] == 0.25
    assert abs(a["aggregate_share"] - 2 / 3) < 1e-9
    assert b["last_aggregate_state"] == "pending" and b["last_aggregate_samples"] == 25


def test_a_site_says_its_broker_and_whether_it_holds(tmp_path):
    fill_site(tmp_path / "site.sqlite3")
    view = upper(Store(tmp_path / "site.sqlite3"))
    assert view is not None
    assert [view[k] for k in ("broker", "federation", "site_id")] == [
        "127.0.0.1:18830", "top", "site-a"]
    assert (view["upper_version"], view["site_version"], view["every_versions"]) == (3, 7, 2)
    assert view["holding"] is False  # invited, 1 of 2 site versions made
    fill_site(tmp_path / "site.sqlite3", versions=2)
    assert upper(Store(tmp_path / "site.sqlite3"))["holding"] is True  # its aggregate is out
    fill_site(tmp_path / "site.sqlite3", asked=False, versions=0)
    assert upper(Store(tmp_path / "site.sqlite3"))["holding"] is True  # not invited yet


def test_a_gateway_of_devices_has_no_upper_tier_and_no_sites(tmp_path):
    store = Store(tmp_path / "agg.sqlite3")
    UpperLink(UpperConfig(), store)
    assert upper(store) is None and sites(store) == []


def test_fedge_status_says_the_tier_in_one_line(tmp_path):
    fill_site(tmp_path / "site.sqlite3", versions=2)
    fill_upper_tier(tmp_path / "top.sqlite3")
    site = render(fleet_status(Store(tmp_path / "site.sqlite3")), "site")
    top = render(fleet_status(Store(tmp_path / "top.sqlite3")), "top")
    assert ("tier        site site-a of top at 127.0.0.1:18830: upper version 3 as site "
            "version 7, 2 site version(s) since; holding for the upper tier") in site
    assert "tier        upper tier of 2 site(s), 1 online" in top
    assert "tier" not in render(fleet_status(Store(tmp_path / "agg.sqlite3")), "alone")
