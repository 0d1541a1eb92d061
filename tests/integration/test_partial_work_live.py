"""Partial work through real mosquitto: a device too slow for the round's deadline stops
at it and sends what it has, so every version counts it; with partial work off its
update comes late and the versions are made without it (docs/heterogeneity.md)."""

from __future__ import annotations

import logging

import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer
from fedge.federation import Federation
from fedge.fleet import SlowTrainer
from tests.integration.fleet import Digits

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0
SLOW_BATCH_S = 0.25  # device 2: about 10 batches of 32 per fit, so 2.5 s or more


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(devices=3)


@pytest.mark.parametrize("partial_work", ["deadline", "off"])
def test_a_straggler_sends_its_partial_update_at_the_deadline(tmp_path, digits, caplog,
                                                              partial_work: str):
    caplog.set_level(logging.INFO, logger="edge_client.client")
    train = TrainConfig(epochs=1, lr=0.1, momentum=0.5, prox_mu=0.01,
                        partial_work=partial_work)
    config = AggregatorConfig(
        federation="partial", db_path=tmp_path / "agg.sqlite3", rounds=2, train=train,
        sync=SyncConfig(target_updates=3, round_timeout_s=DEADLINE_S, min_fraction=0.6,
                        deadline_growth=1.0))
    with Federation("mosquitto") as federation:
        federation.add_aggregator(config, digits.initial_weights(),
                                  {"kind": "mlp", "sizes": digits.sizes},
                                  evaluate=lambda w: {"accuracy": digits.accuracy(w)})
        for i, (x, y) in enumerate(digits.shards):
            device = ClientConfig(device_id=f"d{i}", federation="partial",
                                  state_dir=tmp_path / f"d{i}", deadline_margin_s=0.6,
                                  eligibility=EligibilityConfig(enabled=False))
            trainer = SlowTrainer.waiting(mlp_trainer(digits.sizes, i),
                                          SLOW_BATCH_S if i == 2 else 0.0)
            federation.add_device(device, trainer, x, y)
        result = federation.run(timeout_s=90)
    straggler = result.device_stats["d2"]
    if partial_work == "deadline":
        assert [h["updates"] for h in result.history] == [3, 3]
        assert [tuple(h["devices"]) for h in result.history] == [("d0", "d1", "d2")] * 2
        assert straggler.partial_updates == 2
        assert "stopping training to send the partial update" in caplog.text
    else:
        assert [h["updates"] for h in result.history] == [2, 2]
        assert all("d2" not in h["devices"] for h in result.history)
        assert straggler.partial_updates == 0
    assert result.final_accuracy is not None and result.final_accuracy > 0.3
