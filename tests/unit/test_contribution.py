"""Contribution weighting ([strategy] weighting): the factor, the weighted mean, the
per-device weight share in the fairness view."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.fairness import fairness_of
from aggregator.strategy import StrategyConfig
from aggregator.strategy.contribution import FLOOR, Weighted, weight_factor, weighted
from aggregator.strategy.fedavg import FedAvg
from aggregator.strategy.folding import Arrival, FlatUpdate, MeanSum
from edge_client.shared.protocol import Update

F32 = np.float32


@pytest.mark.parametrize("weighting, q, metrics, factor", [
    ("samples", 1.0, {"local_loss": 2.0}, 1.0),
    ("loss", 1.0, {"local_loss": 2.0}, 2.0),
    ("loss", 2.0, {"local_loss": 3.0}, 9.0),
    ("loss", 1.0, {"local_loss": 0.0}, FLOOR),
    ("loss", 1.0, {}, 1.0),  # an update without the metric keeps its samples
    ("loss", 1.0, {"local_loss": float("nan")}, 1.0),
    ("loss_improvement", 1.0, {"local_loss": 2.0, "train_loss": 0.5}, 1.5),
    ("loss_improvement", 1.0, {"local_loss": 0.5, "train_loss": 0.9}, FLOOR),
    ("loss_improvement", 1.0, {"local_loss": 2.0}, 1.0),
])
def test_the_factor_on_samples(weighting, q, metrics, factor):
    assert weight_factor(weighting, q, metrics) == pytest.approx(factor)


def test_a_weighted_mean_replaces_samples_in_the_sum_and_the_normaliser():
    acc = weighted(MeanSum(2, FedAvg().apply_mean), "loss", 1.0)
    assert isinstance(acc, Weighted)
    acc.fold(Arrival("a", "n1", 10, metrics={"local_loss": 3.0}),
             FlatUpdate(np.array([1.0, 0.0], F32), 2))
    acc.fold(Arrival("b", "n2", 30, metrics={"local_loss": 1.0}),
             FlatUpdate(np.array([0.0, 1.0], F32), 2))
    out = acc.finish({"w": np.zeros(2, F32)}, 1.0)
    assert out["w"].tolist() == pytest.approx([0.5, 0.5])  # 30 : 30, not 10 : 30
    plain = MeanSum(2, FedAvg().apply_mean)
    assert weighted(plain, "samples", 1.0) is plain


def test_weighting_is_checked_and_refused_for_rules_that_need_every_update():
    with pytest.raises(ValueError, match="weighting must be one of"):
        StrategyConfig(weighting="quality")
    with pytest.raises(ValueError, match="mean-based"):
        StrategyConfig(name="median", weighting="loss")
    with pytest.raises(ValueError, match="weighting_q"):
        StrategyConfig(weighting="loss", weighting_q=-1)
    from aggregator.config import AggregatorConfig
    from aggregator.privacy.config import PrivacyConfig

    with pytest.raises(ValueError, match="cannot run with"):
        AggregatorConfig(strategy=StrategyConfig(weighting="loss"),
                         privacy=PrivacyConfig(mode="central"))


def test_the_fairness_view_gives_each_devices_weight_share():
    def update(device: str, samples: int, loss: float) -> Update:
        return Update(device, "t", "n", 0, samples, {},
                      metrics={"local_accuracy": 0.5, "local_loss": loss})
    updates = [update("a", 10, 3.0), update("b", 30, 1.0)]
    plain = fairness_of(updates, 0.5)
    assert plain.contributions == plain.weights == {"a": 0.25, "b": 0.75}
    by_loss = fairness_of(updates, 0.5, lambda m: weight_factor("loss", 1.0, m))
    assert by_loss.contributions == {"a": 0.25, "b": 0.75}
    assert by_loss.weights == pytest.approx({"a": 0.5, "b": 0.5})
    assert type(by_loss).from_json(by_loss.to_json()) == by_loss
