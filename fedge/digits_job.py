"""The demo's job: digits, a stratified test split, one Dirichlet share per device, an MLP.

`fedge demo` and the benchmarks that measure it train this job, so that their numbers
compare: device i gets shard i and an MLP seeded `seed + 1 + i`, the gateway starts from
(and scores with) an MLP seeded `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_client.shared.protocol import Weights
from edge_client.training import NumpyTrainer, mlp_trainer
from fedge.datasets import dirichlet_partition, load_digits, stratified_split

TEST_FRACTION = 0.2


@dataclass
class DigitsJob:
    x_test: np.ndarray
    y_test: np.ndarray
    shards: list[tuple[np.ndarray, np.ndarray]]  # device i's own samples
    sizes: list[int]  # the MLP's layer widths
    seed: int

    @classmethod
    def split(cls, devices: int, alpha: float, seed: int, hidden: int) -> DigitsJob:
        """Digits, a stratified 20% test split, and a Dirichlet(alpha) split of the rest."""
        x, y = load_digits()
        x_train, y_train, x_test, y_test = stratified_split(x, y, TEST_FRACTION, seed)
        parts = dirichlet_partition(y_train, devices, alpha, seed)
        shards = [(x_train[p], y_train[p]) for p in parts]
        return cls(x_test, y_test, shards, [x.shape[1], hidden, 10], seed)

    @property
    def arch(self) -> dict:
        return {"kind": "mlp", "sizes": self.sizes}

    def initial_weights(self) -> Weights:
        return mlp_trainer(self.sizes, seed=self.seed).get_weights()

    def device_trainer(self, index: int) -> NumpyTrainer:
        return mlp_trainer(self.sizes, seed=self.seed + 1 + index)

    def evaluator(self) -> EvaluateOnTest:
        return EvaluateOnTest(mlp_trainer(self.sizes, seed=self.seed), self.x_test,
                              self.y_test)


class EvaluateOnTest:
    """The aggregator's `evaluate`: a version's weights scored on the held-out split."""

    def __init__(self, trainer: NumpyTrainer, x: np.ndarray, y: np.ndarray) -> None:
        self.trainer, self.x, self.y = trainer, x, y

    def __call__(self, weights: Weights) -> dict[str, float]:
        self.trainer.set_weights(weights)
        return self.trainer.evaluate(self.x, self.y)
