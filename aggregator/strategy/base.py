"""The Strategy interface: how accepted updates become the next global model.

Robust, adaptive and private strategies plug in here. The math lives in plain
functions over lists of contributions (like `weighted_mean`) so that sync rounds and
buffered async share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_client.protocol import Weights


@dataclass(frozen=True)
class Contribution:
    """One update's delta and its weight (samples, times a staleness factor in async)."""

    device_id: str
    delta: Weights
    weight: float


class Strategy(Protocol):
    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        """Return the next global weights."""
        ...


def weighted_mean(contributions: list[Contribution]) -> Weights:
    """Sum of weight * delta over the sum of weights, one vectorised pass per tensor."""
    if not contributions:
        raise ValueError("no contributions to aggregate")
    weights = np.array([c.weight for c in contributions], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        raise ValueError("contribution weights must be finite and sum to more than zero")
    weights /= weights.sum()
    out: Weights = {}
    for name in contributions[0].delta:
        stacked = np.stack([c.delta[name] for c in contributions]).astype(np.float64)
        out[name] = np.tensordot(weights, stacked, axes=1).astype(np.float32)
    return out
