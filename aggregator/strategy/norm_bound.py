"""Norm bounding: clip every update to an L2 bound, then take FedAvg's weighted mean.

Sun et al. 2019, "Can You Really Backdoor Federated Learning?",
https://arxiv.org/abs/1911.07963
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.strategy.base import Contribution, mean_weights
from aggregator.strategy.stacking import apply_step, as_matrix, stack
from edge_client.shared.protocol import Weights


def clip_to_norm(updates: Sequence[np.ndarray] | np.ndarray,
                 bound: float | None = None) -> np.ndarray:
    """Each update scaled down to L2 norm <= bound (None: the median norm of these).

    The median norm adapts as updates shrink over training, and a minority cannot
    raise it. Zero updates stay zero (no 0/0).
    """
    rows = as_matrix(updates)
    norms = np.linalg.norm(rows, axis=1)
    limit = float(np.median(norms)) if bound is None else bound
    if not limit >= 0:
        raise ValueError(f"the norm bound must be >= 0, not {limit}")
    scale = np.minimum(1.0, np.divide(limit, norms, out=np.ones_like(norms),
                                      where=norms > limit))
    return rows * scale[:, None]


@dataclass(frozen=True)
class NormBound:
    """Bounds what any one device can do to the model: a scaled-up (boosted) update
    counts no more than an honest one. Keeps FedAvg's weighting, so it costs little when
    nobody attacks; it does nothing against attacks within the bound (a sign flip)."""

    bound: float | None = None  # fixed L2 bound; None: the round's median norm

    def __post_init__(self) -> None:
        if self.bound is not None and not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"norm bound must be a finite number > 0, not {self.bound}")

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        stacked = stack(global_weights, contributions)
        clipped = clip_to_norm(stacked.rows, self.bound)
        mean = mean_weights(stacked.contributions) @ clipped
        return apply_step(global_weights, mean, server_lr)
