"""The fairness view (aggregator/fairness.py): its statistics, its config key, and how
/api/fairness and the Prometheus gauges serve it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.config import load_aggregator_config
from aggregator.core.pending import PendingRecord
from aggregator.fairness import SECURE_NOTE, Fairness, FairnessConfig, fairness_of
from aggregator.store import Store
from aggregator.web import create_app
from aggregator.web.openapi import FAIRNESS_DEFAULT, openapi_document
from edge_client.shared.protocol import Model, encode
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.shared.settings import ConfigError


@dataclass
class Sent:
    device_id: str
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


def _sent(accuracies: list[float], samples: int = 10) -> list[Sent]:
    return [Sent(f"d{i}", samples, {"local_accuracy": a}) for i, a in enumerate(accuracies)]


# ---------------------------------------------------------------- the statistics
def test_no_updates():
    assert fairness_of([], 0.5) == Fairness(0, None, None, None, 0, 0.5, {})


def test_updates_without_accuracy_still_say_who_contributed():
    found = fairness_of([Sent("b", 30), Sent("a", 10, {"local_accuracy": math.nan})], 0.5)
    assert (found.devices, found.median, found.p10, found.worst_decile) == (0, None, None, None)
    assert found.contributions == {"a": 0.25, "b": 0.75}
    assert list(found.contributions) == ["a", "b"]  # sorted by device


def test_one_device():
    found = fairness_of(_sent([0.42]), 0.5)
    assert (found.devices, found.median, found.p10, found.worst_decile) == (1, 0.42, 0.42, 0.42)
    assert found.under_floor == 1 and found.contributions == {"d0": 1.0}


def test_ten_devices():
    values = [0.1 * i for i in range(1, 11)]  # 0.1 .. 1.0
    found = fairness_of(_sent(values[::-1]), 0.35)
    assert found.devices == 10
    assert found.median == pytest.approx(0.55)
    assert found.p10 == pytest.approx(0.19)  # 0.1 + 0.9 * (0.2 - 0.1)
    assert found.worst_decile == pytest.approx(0.1)  # ceil(10 / 10) = 1 device
    assert found.under_floor == 3  # 0.1, 0.2, 0.3
    assert sum(found.contributions.values()) == pytest.approx(1.0)


def test_eleven_devices_worst_decile_is_two():
    found = fairness_of(_sent([0.2, 0.4] + [0.9] * 9), 0.5)
    assert found.worst_decile == pytest.approx(0.3)
    assert found.under_floor == 2


def test_ties_and_the_floor_itself():
    found = fairness_of(_sent([0.5, 0.5, 0.5, 0.5]), 0.5)
    assert (found.median, found.p10, found.worst_decile) == (0.5, 0.5, 0.5)
    assert found.under_floor == 0  # strictly below


def test_a_device_with_two_updates_counts_once():
    updates = [Sent("a", 10, {"local_accuracy": 0.2}), Sent("a", 30, {"local_accuracy": 0.4}),
               Sent("b", 60, {"local_accuracy": 0.9})]
    found = fairness_of(updates, 0.5)
    assert found.devices == 2 and found.median == pytest.approx(0.6)
    assert found.contributions == {"a": 0.4, "b": 0.6}


def test_pending_records_work_and_json_round_trips():
    records = [PendingRecord("a", "t", "n1", 0, 5, {"local_accuracy": 0.7}),
               PendingRecord("b", "t", "n2", 0, 15, {"local_accuracy": 0.3})]
    found = fairness_of(records, 0.5)
    assert Fairness.from_json(found.to_json()) == found
    assert found.to_json()["contributions"] == {"a": 0.25, "b": 0.75}


# ---------------------------------------------------------------- the key
def test_floor_default_and_setting():
    assert load_aggregator_config({}).fairness.accuracy_floor == 0.5
    assert load_aggregator_config({"fairness": {"accuracy_floor": 0.8}}
                                  ).fairness.accuracy_floor == 0.8


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, "high"])
def test_bad_floor_is_one_line_naming_the_key(bad):
    with pytest.raises(ConfigError) as err:
        load_aggregator_config({"fairness": {"accuracy_floor": bad}})
    message = str(err.value)
    assert "fairness" in message and "accuracy_floor" in message and "\n" not in message
    with pytest.raises(ValueError):
        FairnessConfig(accuracy_floor=bad)


# ---------------------------------------------------------------- API and metrics
def _store(path: Path) -> Path:
    """v0; v1 plain with figures; v2 secure (no figures); v3 from before the view; v4 plain."""
    store = Store(path)
    for version, info in enumerate([
            {"round": 0, "updates": 0},
            {"round": 1, "updates": 3, "fairness": fairness_of(_sent([0.3, 0.6, 0.9]), 0.5)
             .to_json()},
            {"round": 2, "updates": 3, "secagg": {"contributors": 3}},
            {"round": 3, "updates": 3},
            {"round": 4, "updates": 2, "fairness": fairness_of(
                [Sent("x", 30, {"local_accuracy": 0.8}), Sent("y", 10, {"local_accuracy": 0.4})],
                0.5).to_json()}]):
        blob = encode(Model(version=version, tensors={}, arch={}))
        store.add_model(version, blob, sha256_hex(blob), info)
    store.close()
    return path


@pytest.fixture
def client(tmp_path):
    return create_app(_store(tmp_path / "agg.sqlite3"), None, None).test_client()


def test_api_fairness_newest_first(client):
    rows = client.get("/api/fairness").get_json()["fairness"]
    assert [r["version"] for r in rows] == [4, 3, 2, 1]
    latest, old, secure, first = rows
    assert latest["devices"] == 2 and latest["median"] == pytest.approx(0.6)
    assert latest["contributions"] == {"x": 0.75, "y": 0.25} and latest["under_floor"] == 1
    assert latest["note"] is None and latest["round"] == 4
    assert secure["note"] == SECURE_NOTE and secure["devices"] == 0
    assert secure["median"] is None and secure["contributions"] == {}
    assert "not recorded" in old["note"]
    assert first["median"] == pytest.approx(0.6) and first["p10"] == pytest.approx(0.36)


def test_api_fairness_latest(client):
    rows = client.get("/api/fairness?latest=2").get_json()["fairness"]
    assert [r["version"] for r in rows] == [4, 3]
    assert FAIRNESS_DEFAULT >= 4


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1001", "9" * 5000, "٣"])
def test_api_fairness_bad_latest_is_400(client, bad):
    response = client.get(f"/api/fairness?latest={bad}")
    assert response.status_code == 400 and "latest must be" in response.get_json()["error"]


def test_api_fairness_rows_match_the_schema(client):
    schema = openapi_document()["components"]["schemas"]["FairnessRow"]
    for row in client.get("/api/fairness").get_json()["fairness"]:
        assert set(row) == set(schema["properties"]) == set(schema["required"])


def test_api_fairness_empty_store(tmp_path):
    Store(tmp_path / "empty.sqlite3").close()
    app = create_app(tmp_path / "empty.sqlite3", None, None).test_client()
    assert app.get("/api/fairness").get_json() == {"fairness": []}
    assert "fedge_device_accuracy" not in app.get("/metrics").get_data(as_text=True)


def _gauges(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("fedge_device_accuracy")}


def test_metrics_show_the_latest_version_with_figures(client):
    assert _gauges(client) == pytest.approx({
        "fedge_device_accuracy_median": 0.6, "fedge_device_accuracy_p10": 0.44,
        "fedge_device_accuracy_worst_decile": 0.4, "fedge_device_accuracy_under_floor": 1})
