"""The tables added for model stages, drift and tiers, the same on SQLite and on
PostgreSQL (`make_store`, tests/conftest.py: each test runs once per backend)."""

from __future__ import annotations

import json

from aggregator.lifecycle.stages import Command, Stage, StageChange
from aggregator.states import UpdateState
from aggregator.store_drift import drift_history
from aggregator.tier_view import sites
from edge_client.shared.protocol import Status, Update, encode
from edge_client.shared.protocol.drift import DriftReport


def test_stages_audit_and_canary_reports(make_store):
    store = make_store()
    store.add_model(0, b"m0", "sha0", {})
    store.add_model(1, b"m1", "sha1", {})
    assert store.migrate_stages() == 2
    assert store.migrate_stages() == 0  # once
    store.set_stages([StageChange(5.0, 1, Stage.PRODUCTION, Stage.ROLLED_BACK, "rule",
                                  "worse than production")])
    assert store.stages() == {0: Stage.PRODUCTION, 1: Stage.ROLLED_BACK}
    assert [c.actor for c in store.stage_audit(1)] == ["migration", "rule"]
    assert store.add_canary_report(1, "dev-0", {"accuracy": 0.5})
    assert store.canary_reports(1) == [{"accuracy": 0.5}]


def test_operator_requests_are_numbered_in_order(make_store):
    store = make_store()
    first = store.request_stage(Command.PROMOTE, 3, "operator:cli:root")
    second = store.request_stage(Command.ROLLBACK, 2, "operator:cli:root")
    assert second > first
    assert [(r.id, r.version) for r in store.waiting_stage_requests()] == [(first, 3),
                                                                          (second, 2)]
    store.finish_stage_request(first, "promoted")
    assert [r.id for r in store.waiting_stage_requests()] == [second]
    done = store.stage_request(first)
    assert done is not None and done["outcome"] == "promoted" and done["id"] == first


def test_drift_reports_keep_a_history_per_device(make_store):
    store = make_store()
    reports = [(Status(device_id="dev-0", online=True, drift=DriftReport(psi_max=p,
                                                                         psi_mean=p / 2,
                                                                         seen=200)), at)
               for at, p in ((1.0, 0.1), (2.0, 0.4))]
    store.set_devices(reports)
    history = drift_history(store.db)
    assert [h["psi_max"] for h in history["dev-0"]] == [0.1, 0.4]
    store.forget_device("dev-0")
    assert drift_history(store.db) == {}


def test_sites_view_takes_each_sites_newest_aggregate(make_store):
    store = make_store()
    for nonce, at_samples in (("a", 10), ("b", 30)):
        u = Update(device_id="site-a", task_id=f"t-{nonce}", nonce=nonce, base_version=0,
                   num_samples=at_samples, tensors={},
                   metrics={"site_updates": 4, "site_versions": 2})
        store.add_update(u, encode(u), UpdateState.PENDING)
    [row] = sites(store)
    assert row["site"] == "site-a" and row["devices_behind"] == 4
    assert row["last_aggregate_samples"] in (10, 30)


def test_the_stage_commands_go_through_db_url(tmp_path, capsys, postgres_url):
    """`fedge aggregator rollback/stages` on a PostgreSQL store, as the service reads it."""
    from aggregator.store import Store
    from fedge.cli import main

    config = tmp_path / "aggregator.toml"
    config.write_text(f'db_url = "{postgres_url}"\n')
    store = Store(postgres_url)
    try:
        store.add_model(0, b"m0", "sha0", {})
        store.migrate_stages()  # as the service does when it opens the store
    finally:
        store.close()
    assert main(["aggregator", "rollback", "--config", str(config), "--to", "0"]) == 0
    capsys.readouterr()
    assert main(["aggregator", "stages", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == {"0": "production"}
    store = Store(postgres_url)
    try:
        [request] = store.waiting_stage_requests()
    finally:
        store.close()
    assert request.version == 0
