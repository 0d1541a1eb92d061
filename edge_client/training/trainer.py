"""The contract between the edge client and any local training backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_client.shared.train_config import TrainConfig
from edge_client.shared.weights import Weights


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
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitResult:
        """Train in place; should_stop is checked before every batch so a round can be cut."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Return {"loss": ..., "accuracy": ...} without changing the weights."""
        ...
