"""Krum and Multi-Krum: keep the updates closest to their neighbours, average those.

Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", https://papers.nips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.strategy.base import Contribution
from aggregator.strategy.median import aggregate_median
from aggregator.strategy.stacking import apply_step, as_matrix, stack
from edge_client.shared.protocol import Weights

log = logging.getLogger(__name__)


def krum_scores(updates: Sequence[np.ndarray] | np.ndarray, f: int) -> np.ndarray:
    """Each update's sum of squared distances to its n - f - 2 nearest others.

    Distances come from one Gram matrix (|a|^2 + |b|^2 - 2 a.b), an (n, n) product
    instead of n^2 passes over d; float64 keeps the cancellation harmless.
    """
    rows = as_matrix(updates)
    n = rows.shape[0]
    if n <= 2 * f + 2:
        raise ValueError(f"Krum with f={f} needs more than {2 * f + 2} updates, got {n}")
    norms = np.einsum("ij,ij->i", rows, rows)
    distances = np.maximum(norms[:, None] + norms[None, :] - 2.0 * rows @ rows.T, 0.0)
    np.fill_diagonal(distances, np.inf)  # sorts last: never one's own neighbour
    return np.sort(distances, axis=1)[:, :n - f - 2].sum(axis=1)


def krum_select(updates: Sequence[np.ndarray] | np.ndarray, f: int, m: int) -> np.ndarray:
    """Indices of the m best-scored updates (ties to the lower index, so device order)."""
    scores = krum_scores(updates, f)
    if not 1 <= m <= len(scores):
        raise ValueError(f"m must be 1 to {len(scores)}, not {m}")
    return np.argsort(scores, kind="stable")[:m]


def aggregate_krum(updates: Sequence[np.ndarray] | np.ndarray, f: int,
                   m: int = 1) -> np.ndarray:
    """Krum (m = 1) or the plain mean of Multi-Krum's m chosen updates."""
    rows = as_matrix(updates)
    return rows[krum_select(rows, f, m)].mean(axis=0)


@dataclass(frozen=True)
class Krum:
    """f assumed Byzantine devices; average the m best (None: n - f, all but f).

    Krum needs n > 2f + 2 updates in a round. With fewer it cannot tell a cluster from
    an attack, so the round falls back to the coordinate-wise median, with a warning.
    Unweighted, like the median: claimed sample counts are not trusted.
    """

    byzantine: int = 1
    m: int | None = 1

    def __post_init__(self) -> None:
        if self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, not {self.byzantine}")
        if self.m is not None and self.m < 1:
            raise ValueError(f"multi-Krum m must be >= 1 or None (n - f), not {self.m}")

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        stacked = stack(global_weights, contributions)
        rows = stacked.staleness_scaled()
        n, f = len(rows), self.byzantine
        if n <= 2 * f + 2:
            log.warning("krum: %d updates are too few for f=%d (needs more than %d); "
                        "using the coordinate-wise median this round", n, f, 2 * f + 2)
            return apply_step(global_weights, aggregate_median(rows), server_lr)
        m = min(self.m or n - f, n - f)  # more than n - f would surely include attackers
        chosen = krum_select(rows, f, m)
        log.info("krum: kept %s", ", ".join(stacked.contributions[i].device_id
                                            for i in sorted(chosen)))
        return apply_step(global_weights, rows[chosen].mean(axis=0), server_lr)
