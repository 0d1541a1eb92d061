"""Streaming aggregation: each update is folded into a running sum as it arrives.

Mean-based strategies (FedAvg, the server optimizers, and the DP wrappers over them)
need only the sample-weighted sum of the deltas, so a round costs one float64 vector of
the model's size whatever the cohort. A `FlatUpdate` is an update's values over the flat
layout (tensors in sorted-name order, as the codecs lay them out): dense, or the
(index, value) pairs of a sparse codec, which are added straight into the sum without a
dense copy. What is needed later about each update (device, samples, norm) is kept as a
few numbers, never as a tensor.

Strategies that need every update (median, trimmed mean, Krum, norm bounding) get a
`HeldRows` instead: their rows, float32, until the version (docs/strategies.md: the
cohort they accept is bounded by `[strategy] memory_limit_mb`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from aggregator.strategy.base import Contribution, Strategy
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.tensors import unflatten_like

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlatUpdate:
    """An update's float32 values over the flat model layout: `index` None means dense
    (every coordinate in order), else the sorted unique coordinates `values` belong to."""

    values: np.ndarray
    size: int
    index: np.ndarray | None = None

    def add_into(self, out: np.ndarray, weight: float) -> None:
        """out += weight * self (float64 products, as the batch path's)."""
        scaled = np.multiply(self.values, weight, dtype=np.float64)
        if self.index is None:
            out += scaled
        else:
            out[self.index] += scaled

    def norm(self) -> float:
        """The L2 norm of the whole update (its zeros add nothing)."""
        return float(np.linalg.norm(self.values.astype(np.float64)))

    def finite(self) -> bool:
        return bool(np.isfinite(self.values).all())

    def dense(self) -> np.ndarray:
        """The float32 vector of length `size` (zeros where a sparse update sent nothing)."""
        if self.index is None:
            return self.values
        out = np.zeros(self.size, np.float32)
        out[self.index] = self.values
        return out


@dataclass(frozen=True)
class Arrival:
    """What a strategy needs of one accepted update besides its values."""

    device_id: str
    nonce: str
    samples: float  # the sample count, or a contribution-weighted one (contribution.py)
    staleness_factor: float = 1.0
    group: int | None = None  # the cluster it trained (aggregator/clusters.py), if any
    # the device's metrics (local_loss, train_loss): contribution weighting reads them
    metrics: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)


class Accumulator(Protocol):
    """One round's updates, folded as they come; `finish` makes the next model."""

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        ...

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        """The next global weights; ValueError if the round cannot make one."""
        ...


ApplyMean = Callable[[Weights, np.ndarray, float], Weights]  # (global, mean, server_lr)


class MeanSum:
    """The sum of samples x staleness x delta and the sum of samples: FedAvg's weighted
    mean (`weighted_mean`) without holding the deltas; `apply` turns the mean into the
    next model (FedAvg's step, or a server optimizer's). Updates with NaN or inf are
    left out with a warning, as `stack` drops them."""

    def __init__(self, size: int, apply: ApplyMean) -> None:
        self.apply = apply
        self.total = np.zeros(size, np.float64)
        self.samples: float = 0  # a sum of ints unless contributions are weighted
        self.folded = 0
        self.invalid = False  # a non-positive sample count or a bad staleness factor

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        if not update.finite():
            log.warning("strategy: dropped 1 update(s) with NaN or inf values: %s",
                        arrival.device_id)
            return
        factor = arrival.staleness_factor
        if arrival.samples <= 0 or not np.isfinite(factor) or factor < 0:
            self.invalid = True
            return
        update.add_into(self.total, float(arrival.samples) * factor)
        self.samples += arrival.samples
        self.folded += 1

    def mean(self) -> np.ndarray:
        """The weighted mean delta, flat float64; ValueError as `mean_weights` raises."""
        if self.invalid:
            raise ValueError("contributions need positive samples and finite staleness factors")
        if self.folded == 0:
            raise ValueError("no contribution has finite values")
        return self.total / float(self.samples)

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        return self.apply(global_weights, self.mean(), server_lr)


@runtime_checkable
class Streaming(Protocol):
    """A strategy that aggregates from a running sum (FedAvg, FedOpt, the DP wrappers)."""

    def start(self, global_weights: Weights,
              repeated: frozenset[str] = frozenset()) -> Accumulator:
        """A fresh running sum for one round; `repeated` names devices known to send more
        than one update into it (only a per-device clip cares)."""
        ...


class HeldRows:
    """Every update's dense float32 row, for a strategy that needs them all; `finish`
    hands them to its `aggregate` in device order, as the batch path always did."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.rows: list[tuple[Arrival, np.ndarray]] = []

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        self.rows.append((arrival, update.dense()))

    def contributions(self, global_weights: Weights) -> list[Contribution]:
        ordered = sorted(self.rows, key=lambda r: (r[0].device_id, r[0].nonce))
        return [Contribution(a.device_id, unflatten_like(row, global_weights), int(a.samples),
                             a.staleness_factor) for a, row in ordered]

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        return self.strategy.aggregate(global_weights, self.contributions(global_weights),
                                       server_lr)


def accumulator_for(strategy: Strategy, global_weights: Weights,
                    repeated: frozenset[str] = frozenset()) -> Accumulator:
    """A running sum for a mean-based strategy, held rows for the others."""
    if isinstance(strategy, Streaming):
        return strategy.start(global_weights, repeated)
    return HeldRows(strategy)


def model_size(weights: Weights) -> int:
    return sum(int(np.size(w)) for w in weights.values())
