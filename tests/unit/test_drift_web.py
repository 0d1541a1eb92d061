"""/api/drift, its Prometheus gauges and its OpenAPI schema, read from a store the way
the service leaves it (issue 18, "Drift")."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from aggregator.drift import DriftConfig, DriftWatch
from aggregator.store import Store
from aggregator.web import create_app
from aggregator.web.openapi import openapi_document
from edge_client.shared.protocol import Status
from edge_client.shared.protocol.drift import DriftReport

CALM = DriftReport(psi_max=0.05, psi_mean=0.01, feature=0, seen=300, accuracy=0.9,
                   labelled=40)
SHIFTED = DriftReport(psi_max=3.5, psi_mean=0.8, feature=12, seen=300)


def _filled(path) -> None:
    store = Store(path)
    watch = DriftWatch(DriftConfig(psi_threshold=0.25, min_devices=1, campaign_rounds=2),
                       store)
    store.set_devices([(Status("dev-0", True, drift=CALM), 100.0),
                       (Status("dev-1", True, drift=CALM), 100.0),
                       (Status("dev-2", True), 100.0)])  # an older device: no drift field
    shifted = Status("dev-1", True, drift=SHIFTED)
    store.set_devices([(shifted, 160.0)])
    assert watch.on_status(shifted, 160.0, 4, 10, None) is not None
    store.close()


def test_api_drift_shows_devices_history_rule_and_campaigns(tmp_path):
    _filled(tmp_path / "s.sqlite3")
    client = create_app(tmp_path / "s.sqlite3", None, None).test_client()
    body = client.get("/api/drift").get_json()
    assert body["rule"]["enabled"] and body["rule"]["psi_threshold"] == 0.25
    rows = {d["device_id"]: d for d in body["devices"]}
    assert set(rows) == {"dev-0", "dev-1"}  # dev-2 reports no drift
    assert rows["dev-1"]["drifting"] and rows["dev-1"]["psi_max"] == 3.5
    assert rows["dev-1"]["why"] == "PSI max 3.5 > 0.25" and rows["dev-1"]["at"] == 160.0
    assert not rows["dev-0"]["drifting"] and rows["dev-0"]["accuracy"] == 0.9
    assert [p["psi_max"] for p in body["history"]["dev-1"]] == [0.05, 3.5]
    [campaign] = body["campaigns"]
    assert campaign["devices"] == ["dev-1"] and campaign["until_version"] == 12
    assert campaign["open"]  # no version made yet in this store
    schema = openapi_document()["components"]["schemas"]["Drift"]
    assert set(body) == set(schema["required"])
    assert set(rows["dev-1"]) == set(schema["properties"]["devices"]["items"]["required"])
    assert set(campaign) == set(schema["properties"]["campaigns"]["items"]["required"])
    assert set(body["rule"]) == set(schema["properties"]["rule"]["required"])


def test_metrics_gauge_drift(tmp_path):
    _filled(tmp_path / "s.sqlite3")
    client = create_app(tmp_path / "s.sqlite3", None, None).test_client()
    text = client.get("/metrics").get_data(as_text=True)
    gauges = {s.name: s.value for f in text_string_to_metric_families(text)
              for s in f.samples if s.name.startswith("fedge_drift")}
    assert gauges == {"fedge_drift_devices": 1, "fedge_drift_campaigns": 1,
                      "fedge_drift_campaign_open": 1, "fedge_drift_psi_max": 3.5}


def test_an_empty_store_has_no_drift(tmp_path):
    Store(tmp_path / "e.sqlite3").close()
    client = create_app(tmp_path / "e.sqlite3", None, None).test_client()
    body = client.get("/api/drift").get_json()
    assert body["devices"] == [] and body["campaigns"] == [] and not body["rule"]["enabled"]
    assert "fedge_drift" not in client.get("/metrics").get_data(as_text=True)
