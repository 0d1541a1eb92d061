"""Contributions as one matrix, and a step back onto the global model.

The robust strategies and the server optimizers work on flat vectors: every delta is
flattened once (tensors in sorted-name order, as the codecs lay them out) into a row of
an (n, d) float64 matrix, so each rule is a few numpy calls over axis 0 instead of a
loop over tensors. float64 keeps sums, squares and distances of float32 deltas exact
enough and far from overflow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.strategy.base import Contribution, mean_weights
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.tensors import flatten_sorted, unflatten_like

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stacked:
    """The usable contributions and their flattened deltas, row i from contributions[i]."""

    rows: np.ndarray  # (n, d) float64
    contributions: list[Contribution]

    def staleness_scaled(self) -> np.ndarray:
        """Rows times their staleness factors, so a stale update counts for less.

        The robust rules take no sample weights (a Byzantine device can claim any sample
        count), so this is how they see staleness: as FedBuff's shrunken step.
        """
        factors = np.array([c.staleness_factor for c in self.contributions], np.float64)
        if not np.all(np.isfinite(factors)) or factors.min() < 0:
            raise ValueError("staleness factors must be finite and >= 0")
        return self.rows if np.all(factors == 1.0) else self.rows * factors[:, None]

    def weighted_mean(self) -> np.ndarray:
        """FedAvg's sample- and staleness-weighted mean of the rows."""
        return mean_weights(self.contributions) @ self.rows


def as_matrix(updates: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Flat updates as an (n, d) float64 matrix (no copy when already one)."""
    rows = np.asarray(updates, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError("need at least one flat update")
    return rows


def stack(global_weights: Weights, contributions: list[Contribution]) -> Stacked:
    """Flatten every delta into one matrix; ValueError if none is usable.

    A delta whose tensors differ from the global model's is refused. One with NaN or inf
    is dropped with a warning: a single such row would turn the median, Krum's distances
    or an optimizer's moments into NaN for good, and a finite update cannot carry it.
    """
    if not contributions:
        raise ValueError("no contributions to aggregate")
    shapes = {name: np.shape(w) for name, w in global_weights.items()}
    for c in contributions:
        if {name: np.shape(d) for name, d in c.delta.items()} != shapes:
            raise ValueError(f"the delta from {c.device_id} does not match the model's "
                             f"tensors")
    size = sum(int(np.prod(s)) for s in shapes.values())
    rows = np.empty((len(contributions), size), np.float64)
    for i, c in enumerate(contributions):
        rows[i] = flatten_sorted(c.delta)
    finite = np.all(np.isfinite(rows), axis=1)
    if not finite.all():
        dropped = [c.device_id for c, ok in zip(contributions, finite, strict=True) if not ok]
        log.warning("strategy: dropped %d update(s) with NaN or inf values: %s",
                    len(dropped), ", ".join(dropped))
        if not finite.any():
            raise ValueError("no contribution has finite values")
        contributions = [c for c, ok in zip(contributions, finite, strict=True) if ok]
        rows = rows[finite]
    return Stacked(rows, contributions)


def apply_step(global_weights: Weights, step: np.ndarray, server_lr: float) -> Weights:
    """global + server_lr * step, shaped like the global model.

    Raises ValueError instead of returning a model with inf in it: publishing one would
    break every device for good, while a refused round leaves the old model in place.
    """
    base = flatten_sorted(global_weights).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        new = (base + server_lr * step).astype(np.float32)
    if not np.isfinite(new).all():
        raise ValueError("the aggregated model has values float32 cannot hold")
    return unflatten_like(new, global_weights)
