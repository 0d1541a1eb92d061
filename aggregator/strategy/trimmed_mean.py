"""Coordinate-wise trimmed mean: drop the beta*n largest and smallest values, average
the rest.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.strategy.base import Contribution
from aggregator.strategy.stacking import apply_step, as_matrix, stack
from edge_client.shared.protocol import Weights

log = logging.getLogger(__name__)


def trimmed_count(n: int, beta: float) -> int:
    """Values cut from each side: floor(beta * n), as scipy's trim_mean (the 1e-9 keeps
    0.29 * 100 at 29, not 28.999...)."""
    return math.floor(beta * n + 1e-9)


def aggregate_trimmed_mean(updates: Sequence[np.ndarray] | np.ndarray,
                           beta: float) -> np.ndarray:
    """Mean of each coordinate after cutting its floor(beta*n) extremes per side.

    Sorting along axis 0 handles every coordinate at once. Between the mean (beta = 0)
    and the median (beta near 0.5): more of the honest updates' information than the
    median keeps, and robust to up to beta*n attackers.
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), not {beta}")
    rows = as_matrix(updates)
    k = trimmed_count(rows.shape[0], beta)
    if k == 0:
        return rows.mean(axis=0)
    return np.sort(rows, axis=0)[k:rows.shape[0] - k].mean(axis=0)


@dataclass(frozen=True)
class TrimmedMean:
    beta: float = 0.2  # share of the updates cut from each side

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), not {self.beta}")

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        rows = stack(global_weights, contributions).staleness_scaled()
        if self.beta > 0 and trimmed_count(len(rows), self.beta) == 0:
            log.warning("trimmed mean: %d updates with beta %.2f trim nothing; this round "
                        "is a plain mean", len(rows), self.beta)
        return apply_step(global_weights, aggregate_trimmed_mean(rows, self.beta), server_lr)
