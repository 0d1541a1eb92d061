"""The contract between the edge client and any local training backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_client.training.weights import Weights


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters for one local fit; usually sent by the aggregator each round."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    prox_mu: float = 0.0
    """FedProx: adds mu/2 * ||w - w_start||^2, w_start = weights when fit starts. 0 = FedAvg."""
    seed: int = 0
    """Shuffling seed; vary it per round or every round sees the same batch order."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.prox_mu >= 0:
            raise ValueError(f"prox_mu must be >= 0, got {self.prox_mu}")


@dataclass(frozen=True)
class FitResult:
    """What a fit reports back, so the server can weight and monitor the update."""

    num_samples: int
    """len(x): the aggregation weight."""
    loss: float
    """Mean data loss (without the FedProx term) over the batches run; NaN if none ran."""
    batches: int
    train_s: float
    """Wall time of the fit in seconds (time.perf_counter)."""
    stopped_early: bool
    """True when should_stop() returned True at a batch boundary."""


@runtime_checkable
class Trainer(Protocol):
    """Anything the edge client can train: numpy today, maybe TFLite or torch later."""

    def get_weights(self) -> Weights:
        """Return copies, so callers can keep them while training continues."""
        ...

    def set_weights(self, weights: Weights) -> None:
        """Load weights; raise ValueError if names or shapes differ from the model."""
        ...

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        config: FitConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitResult:
        """Train in place; should_stop is checked before every batch so a round can be cut."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Return {"loss": ..., "accuracy": ...} without changing the weights."""
        ...
