"""benchmarks/personal_runs.py on digits split non-IID by label (0-4 or 5-9), through a
real mosquitto: what the heterogeneity benchmark calls."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from benchmarks.personal_runs import (
    RunSettings,
    digits_by_label,
    run_clustered,
    run_personalized,
    run_plain,
)
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def parts():
    return digits_by_label(devices=4, groups=2, seed=0)


def test_personalised_and_clustered_runs_beat_fedavg_per_device(mosquitto, parts):
    settings = RunSettings(rounds=4, broker=mosquitto)
    plain = run_plain(parts, settings=settings)
    layers = run_personalized(parts, "layers", settings=settings)
    ditto = run_personalized(parts, "ditto", settings=settings)
    clusters = run_clustered(parts, 2, settings=settings)
    assert plain["accuracy"] == plain["global_accuracy"]  # FedAvg serves the global model
    for run in (layers, ditto, clusters):
        assert run["accuracy"] > plain["accuracy"], run
        assert run["versions"] == 4 and len(run["per_device"]) == 4
    # the head stays home and other clusters' zeros are not sent: no more uplink than FedAvg
    assert layers["update_bytes"] < plain["update_bytes"]
    assert clusters["update_bytes"] < 1.1 * plain["update_bytes"]
    assert clusters["membership"]["device-0"] == clusters["membership"]["device-2"] != \
        clusters["membership"]["device-1"]
    assert clusters["cluster_sizes"] == {"0": 2, "1": 2}


def test_a_job_object_gives_its_data_model_and_training(mosquitto, parts):
    sizes = [64, 24, 10]
    job = SimpleNamespace(
        devices=[SimpleNamespace(**dataclasses.asdict(p)) for p in parts],
        arch={"kind": "mlp", "sizes": sizes}, seed=3,
        train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
        trainer=lambda seed=0: mlp_trainer(sizes, seed))
    run = run_personalized(job, "layers",
                           settings=RunSettings(rounds=2, broker=mosquitto, train=job.train))
    assert run["versions"] == 2 and run["accuracy"] > 0.5
