"""Simulated model poisoning: devices that train honestly and then report a bad model.

Shared by `fedge demo --attackers` and benchmarks/poisoning.py, so that both attack the
same way:

- sign_flip: global - (local - global), the honest update reversed;
- scale10:   global + 10 (local - global), the honest update boosted tenfold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_client.training import FitResult, TrainConfig, Trainer

ATTACKS: dict[str, float] = {"sign_flip": -1.0, "scale10": 10.0}  # factor on the update


class PoisonedTrainer:
    """Trains honestly, then reports global + factor * (local - global)."""

    def __init__(self, inner: Trainer, factor: float) -> None:
        self.inner = inner
        self.factor = factor
        self._global: dict[str, np.ndarray] | None = None

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self._global = {k: np.array(v, copy=True) for k, v in weights.items()}
        self.inner.set_weights(weights)

    def get_weights(self) -> dict[str, np.ndarray]:
        local = self.inner.get_weights()
        if self._global is None:
            return local
        return {k: (g + self.factor * (local[k] - g)).astype(local[k].dtype)
                for k, g in self._global.items()}

    def fit(self, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        return self.inner.fit(x, y, config, should_stop=should_stop)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return self.inner.evaluate(x, y)


def poisoned(inner: Trainer, attack: str) -> PoisonedTrainer:
    """`inner` made an attacker; ValueError naming the attacks for an unknown one."""
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {tuple(ATTACKS)}, not {attack!r}")
    return PoisonedTrainer(inner, ATTACKS[attack])
