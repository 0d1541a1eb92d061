"""FedMedian: the coordinate-wise median of the updates.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aggregator.strategy.base import Contribution
from aggregator.strategy.stacking import apply_step, as_matrix, stack
from edge_client.shared.protocol import Weights


def aggregate_median(updates: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Each coordinate's median: fewer than half the updates cannot move it past the
    honest values, whatever they send."""
    return np.median(as_matrix(updates), axis=0)


class Median:
    """Unweighted: a device's claimed sample count is no evidence under attack."""

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        rows = stack(global_weights, contributions).staleness_scaled()
        return apply_step(global_weights, aggregate_median(rows), server_lr)
