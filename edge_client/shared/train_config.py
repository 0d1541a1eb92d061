"""The one training-config type: what the aggregator asks for and what a trainer gets.

Needs nothing but the standard library, so the training package uses it without loading
the protocol; the protocol sends every field but `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings: the aggregator sends them in every task (the `[train]`
    table of its config), and a device's trainer gets them for each fit."""

    epochs: int = 2
    """Passes over the local data."""
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    prox_mu: float = 0.0
    """FedProx: adds mu/2 * ||w - w_start||^2, w_start = weights when fit starts. 0 = FedAvg."""
    seed: int = 0
    """Shuffling seed. Not sent: each device sets its own for every fit
    (edge_client/client.py, `training_seed`), or every round sees the same batch order."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train: epochs and batch_size must be >= 1")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.prox_mu >= 0):
            raise ValueError("train: need lr > 0, 0 <= momentum < 1, prox_mu >= 0")
