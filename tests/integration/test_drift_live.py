"""Drift through the real mosquitto path (issue 18, "Drift"): devices serve with a
Predictor, some of them see shifted inputs, their statuses carry the PSI, and the
gateway's [drift] rule opens a retraining campaign: more versions while training runs,
and new rounds for a federation that had finished."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.drift import DriftConfig, campaigns
from aggregator.service import Aggregator
from aggregator.store import Store
from aggregator.web import create_app
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.predictor import Predictor
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer
from fedge.demo_drift import shifted
from fedge.federation import Federation, PartyThread
from tests.integration.fedge_process import run_fedge
from tests.integration.fleet import Digits, wait_until

pytestmark = pytest.mark.integration
FED = "drift"


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(devices=3)


def _config(tmp_path, rounds: int, port: int = 1883) -> AggregatorConfig:
    return AggregatorConfig(federation=FED, db_path=tmp_path / "agg.sqlite3", port=port,
                            rounds=rounds, train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                            sync=SyncConfig(target_updates=3, round_timeout_s=30),
                            drift=DriftConfig(psi_threshold=0.25, min_devices=2,
                                              campaign_rounds=2))


def _device(tmp_path, i: int, port: int = 1883, **more) -> ClientConfig:
    return ClientConfig(device_id=f"d{i}", federation=FED, state_dir=tmp_path / f"d{i}",
                        port=port, eligibility=EligibilityConfig(enabled=False),
                        eligibility_check_s=0.1, **more)


class App:
    """Asks each device's Predictor about samples of its own data; once `shift()` says
    so, devices d0 and d1 see the changed sensor's inputs."""

    def __init__(self, shift) -> None:
        self.shift = shift
        self.devices: list[tuple[str, Predictor, np.ndarray]] = []

    def run(self, stop: threading.Event) -> None:
        rng = np.random.default_rng(0)
        while not stop.wait(0.02):
            for name, predictor, x in self.devices:
                if predictor.version is None:
                    continue
                batch = x[rng.integers(0, len(x), 100)]
                predictor.predict(shifted(batch) if name != "d2" and self.shift() else batch)


def test_shifted_devices_open_a_campaign_that_adds_versions(tmp_path, digits, caplog):
    caplog.set_level(logging.INFO, "aggregator.service")
    with Federation("mosquitto") as federation:
        aggregator = federation.add_aggregator(
            _config(tmp_path, rounds=4), digits.initial_weights(),
            {"kind": "mlp", "sizes": digits.sizes})
        app = App(lambda: aggregator.version >= 1)
        for i, (x, y) in enumerate(digits.shards):
            predictor = Predictor()
            federation.add_device(_device(tmp_path, i), mlp_trainer(digits.sizes, i), x, y,
                                  predictor=predictor)
            app.devices.append((f"d{i}", predictor, x))
        federation.add_helper(app.run, "app")
        result = federation.run(timeout_s=120)
    assert result.version == 6  # 4 planned + the campaign's 2
    store = Store(tmp_path / "agg.sqlite3")
    try:
        [campaign] = campaigns(store)
    finally:
        store.close()
    assert campaign.devices == ("d0", "d1") and campaign.until_version == 6
    assert 1 <= campaign.at_version < 4
    assert "retraining campaign 1 opened" in caplog.text
    body = create_app(tmp_path / "agg.sqlite3", None, None).test_client().get(
        "/api/drift").get_json()
    rows = {d["device_id"]: d for d in body["devices"]}
    assert rows["d0"]["drifting"] and rows["d1"]["drifting"] and not rows["d2"]["drifting"]
    assert rows["d2"]["psi_max"] < 0.25 < rows["d0"]["psi_max"]
    assert len(body["history"]["d0"]) >= 2  # over time: before and after the shift


def test_a_finished_federation_trains_again_when_its_devices_drift(tmp_path, digits, caplog,
                                                                  mosquitto):
    caplog.set_level(logging.INFO, "aggregator.service")
    aggregator = Aggregator(_config(tmp_path, rounds=2, port=mosquitto.port),
                            digits.initial_weights(), {"kind": "mlp", "sizes": digits.sizes})
    drifting = threading.Event()
    app = App(drifting.is_set)
    clients = []
    for i, (x, y) in enumerate(digits.shards):
        predictor = Predictor()
        clients.append(EdgeClient(_device(tmp_path, i, mosquitto.port, exit_when_done=False),
                                  mlp_trainer(digits.sizes, i), x, y, predictor=predictor))
        app.devices.append((f"d{i}", predictor, x))
    parties = [PartyThread(lambda stop: aggregator.run(stop, exit_when_done=False),
                           "aggregator"),
               *[PartyThread(c.run, c.config.device_id) for c in clients],
               PartyThread(app.run, "app")]
    try:
        wait_until(lambda: aggregator.snapshot.finished, 60, "the planned versions")
        assert aggregator.version == 2
        drifting.set()
        wait_until(lambda: aggregator.version == 4 and aggregator.snapshot.finished, 60,
                   "the campaign's versions")
    finally:
        for party in parties:
            party.stop.set()
        for party in parties:
            party.join(30)
    assert "training resumes for retraining campaign 1" in caplog.text
    assert [h.version for h in aggregator.history][-2:] == [3, 4]


def test_demo_drift_at_opens_a_campaign(tmp_path):
    done = run_fedge("demo", "--json", "--devices", "4", "--rounds", "4", "--drift-at", "2",
                     "--broker", "mosquitto", "--workdir", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    drift = summary["drift"]
    assert drift["at_round"] == 2 and drift["shifted_devices"] == ["device-0", "device-1"]
    assert drift["campaign_opened"] and summary["model_versions"] == 7  # 4 + 3
    [campaign] = drift["campaigns"]
    assert set(campaign["devices"]) <= {"device-0", "device-1"}
    reports = drift["device_reports"]
    assert reports["device-0"]["psi_max"] > 0.25 > reports["device-3"]["psi_max"]
    assert "drift             round 2" in done.stderr
