"""Personal layers, Ditto and clustered federations through a real mosquitto
(docs/heterogeneity.md): devices on digits split by label group (0-4 or 5-9)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from aggregator.clusters import ClustersConfig
from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.personalize import PersonalizeConfig
from benchmarks.personal_runs import Partition, digits_by_label
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.clusters import cluster_count, unstack
from edge_client.shared.protocol import TrainConfig, Weights
from edge_client.training import mlp_trainer
from fedge.federation import Federation, FederationResult

pytestmark = pytest.mark.integration
SIZES = [64, 16, 10]


@pytest.fixture(scope="module")
def by_label() -> list[Partition]:
    return digits_by_label(devices=4, groups=2, seed=0)


class Served:
    def __init__(self) -> None:
        self.models: dict[str, Weights] = {}
        self.lock = threading.Lock()

    def hook(self, device: str):
        def load(version: int, arch: dict, weights: Weights) -> None:
            with self.lock:
                self.models[device] = weights
        return load


def _run(broker, work: Path, parts: list[Partition], **config) -> tuple[
        FederationResult, list[EdgeClient], Served, Weights]:
    served = Served()
    initial = mlp_trainer(SIZES, seed=0).get_weights()
    cfg = AggregatorConfig(federation="het", db_path=work / "agg.sqlite3", rounds=4,
                           train=TrainConfig(epochs=2, lr=0.1, momentum=0.5),
                           sync=SyncConfig(target_updates=len(parts), round_timeout_s=30),
                           **config)
    with Federation(broker) as federation:
        federation.add_aggregator(cfg, initial, {"kind": "mlp", "sizes": SIZES})
        clients = [federation.add_device(
            ClientConfig(device_id=f"dev-{i}", federation="het", state_dir=work / f"dev-{i}",
                         eligibility=EligibilityConfig(enabled=False)),
            mlp_trainer(SIZES, seed=1 + i), p.x_train, p.y_train,
            on_model=served.hook(f"dev-{i}"), holdout=(p.x_test, p.y_test))
            for i, p in enumerate(parts)]
        result = federation.run(90)
    return result, clients, served, initial


def _accuracy(weights: Weights, part: Partition) -> float:
    trainer = mlp_trainer(SIZES)
    trainer.set_weights(weights)
    return trainer.evaluate(part.x_test, part.y_test)["accuracy"]


def test_personal_layers_stay_on_devices_and_beat_the_global_model(mosquitto, tmp_path,
                                                                    by_label):
    result, clients, served, initial = _run(
        mosquitto, tmp_path, by_label,
        personalize=PersonalizeConfig(mode="layers", personal_layers=["dense1."]))
    final = result.global_weights
    assert result.version == 4
    # the aggregator aggregated only the shared body: the head is as it started, but for
    # the q8 downlink delta's rounding of its zero change (well under 1e-3)
    for name in ("dense1.weight", "dense1.bias"):
        assert np.abs(final[name] - initial[name]).max() < 1e-3
    assert np.abs(final["dense0.weight"] - initial["dense0.weight"]).max() > 0.05
    personal = [_accuracy(served.models[f"dev-{i}"], p) for i, p in enumerate(by_label)]
    shared = [_accuracy(final, p) for p in by_label]
    assert min(personal) > 0.85 and np.mean(personal) > np.mean(shared) + 0.2
    for i in range(len(by_label)):  # each device serves the shared body and its own head
        mine = served.models[f"dev-{i}"]
        assert np.array_equal(mine["dense0.weight"], final["dense0.weight"])
        assert not np.array_equal(mine["dense1.weight"], final["dense1.weight"])
    # what the devices reported: both accuracies, in every version's info
    info = result.history[-1]["personal"]
    assert set(info["devices"]) == {f"dev-{i}" for i in range(4)}
    assert info["personal_accuracy"] > info["global_accuracy"]
    assert all(c.session.status.figures.get("personal_accuracy") for c in clients)
    # a device restarted on its state folder serves its own head again at once
    again = Served()
    part = by_label[0]
    EdgeClient(clients[0].config, mlp_trainer(SIZES, seed=1), part.x_train, part.y_train,
               on_model=again.hook("dev-0"))
    assert np.array_equal(again.models["dev-0"]["dense1.weight"],
                          served.models["dev-0"]["dense1.weight"])


def test_ditto_devices_serve_their_own_model_while_the_global_one_trains(mosquitto,
                                                                        tmp_path, by_label):
    result, _, served, initial = _run(mosquitto, tmp_path, by_label,
                                      personalize=PersonalizeConfig(mode="ditto", lam=0.1))
    final = result.global_weights
    assert not np.array_equal(final["dense1.weight"], initial["dense1.weight"])
    personal = [_accuracy(served.models[f"dev-{i}"], p) for i, p in enumerate(by_label)]
    shared = [_accuracy(final, p) for p in by_label]
    assert np.mean(personal) > np.mean(shared)
    info = result.history[-1]["personal"]
    assert info["personal_accuracy"] is not None and info["global_accuracy"] is not None


def test_clusters_split_the_label_groups_and_devices_serve_their_cluster(mosquitto,
                                                                         tmp_path, by_label):
    result, _, served, _ = _run(mosquitto, tmp_path, by_label,
                                      clusters=ClustersConfig(k=2))
    final = result.global_weights
    assert cluster_count(final) == 2
    models = unstack(final)
    membership = {d: int(row["cluster"])
                  for d, row in result.history[-1]["personal"]["devices"].items()}
    # devices 0 and 2 hold digits 0-4, devices 1 and 3 digits 5-9
    assert membership["dev-0"] == membership["dev-2"] != membership["dev-1"] == \
        membership["dev-3"]
    for i, part in enumerate(by_label):
        mine = served.models[f"dev-{i}"]
        cluster = membership[f"dev-{i}"]
        assert all(np.array_equal(mine[n], models[cluster][n]) for n in mine)
        assert _accuracy(mine, part) > 0.85
    assert result.history[-1]["personal"]["cluster_sizes"] == {"0": 2, "1": 2}
    assert "cluster0_accuracy" not in result.history[-1]  # no evaluator in this test
