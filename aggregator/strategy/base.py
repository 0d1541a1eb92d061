"""The Strategy interface: how accepted updates become the next global model.

Robust, adaptive and private strategies plug in here. The math lives in plain
functions over lists of contributions (like `weighted_mean`) so that sync rounds and
buffered async share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_client.shared.protocol import Weights


@dataclass(frozen=True)
class Contribution:
    """One update's delta, its sample count, and (in async mode) its staleness factor."""

    device_id: str
    delta: Weights
    samples: int
    staleness_factor: float = 1.0


class Strategy(Protocol):
    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        """Return the next global weights."""
        ...


def weighted_mean(contributions: list[Contribution]) -> Weights:
    """Sum of samples * staleness * delta over the sum of samples.

    Dividing by the samples alone (not by samples * staleness) makes stale updates
    shrink the step rather than only reweight it, as FedBuff does; with no staleness it
    is FedAvg's sample-weighted mean. One vectorised pass per tensor.
    """
    weights = mean_weights(contributions)
    out: Weights = {}
    for name in contributions[0].delta:
        stacked = np.stack([c.delta[name] for c in contributions]).astype(np.float64)
        out[name] = np.tensordot(weights, stacked, axes=1).astype(np.float32)
    return out


def mean_weights(contributions: list[Contribution]) -> np.ndarray:
    """Each contribution's weight in `weighted_mean`: samples * staleness / sum of samples.

    Shared with the strategies that average after their own step (norm bounding, the
    server optimizers), so every mean in the package weighs updates the same way.
    """
    if not contributions:
        raise ValueError("no contributions to aggregate")
    samples = np.array([c.samples for c in contributions], dtype=np.float64)
    factors = np.array([c.staleness_factor for c in contributions], dtype=np.float64)
    if samples.min() <= 0 or not np.all(np.isfinite(factors)) or factors.min() < 0:
        raise ValueError("contributions need positive samples and finite staleness factors")
    return samples * factors / samples.sum()
