"""Contribution weighting: how much each update counts in the mean, beyond its samples.

`[strategy] weighting` (docs/heterogeneity.md#contribution-weighting):

- "samples" (the default): FedAvg's weight, the update's sample count.
- "loss": samples x L^q, L the global model's loss on the device's own data before it
  trained (`local_loss`, sent with every update), q = `weighting_q`: the devices the
  model serves worst pull hardest (q-FFL, Li et al. 2020, https://arxiv.org/abs/1905.10497).
- "loss_improvement": samples x max(L - train_loss, floor): how much the device's data
  moved its loss, so a device whose training changed nothing (already fitted, or data
  that teaches nothing) counts little.

The weight replaces the sample count in both the sum and its normaliser (a weighted
mean still sums to one step), and is the per-device `weights` share in the fairness view.
An update without the metric keeps its sample count. Mean-based strategies only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from aggregator.strategy.folding import Accumulator, Arrival, FlatUpdate
from edge_client.shared.protocol import Weights

WEIGHTINGS = ("samples", "loss", "loss_improvement")
FLOOR = 1e-3  # the least factor an update gets: none is ever weighted to nothing


def weight_factor(weighting: str, q: float, metrics: Mapping[str, Any]) -> float:
    """The factor on an update's samples under `weighting`, from its metrics."""
    if weighting == "samples":
        return 1.0
    before = _finite(metrics.get("local_loss"))
    if before is None:
        return 1.0
    if weighting == "loss":
        return max(FLOOR, max(before, 0.0) ** q)
    after = _finite(metrics.get("train_loss"))
    return 1.0 if after is None else max(FLOOR, before - after)


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class Weighted:
    """A running sum whose arrivals count `samples x weight_factor` instead of samples."""

    def __init__(self, inner: Accumulator, weighting: str, q: float) -> None:
        self.inner, self.weighting, self.q = inner, weighting, q

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        factor = weight_factor(self.weighting, self.q, arrival.metrics)
        self.inner.fold(dataclasses.replace(arrival, samples=arrival.samples * factor),
                        update)

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        return self.inner.finish(global_weights, server_lr)


def weighted(acc: Accumulator, weighting: str, q: float) -> Accumulator:
    return acc if weighting == "samples" else Weighted(acc, weighting, q)
