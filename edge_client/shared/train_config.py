"""The one training-config type: what the aggregator asks for and what a trainer gets.

Needs nothing but the standard library, so the training package uses it without loading
the protocol; the protocol sends every field but `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a device does with a fit cut short (docs/heterogeneity.md): "off" drops it, as
# fedge always did; "deadline" stops the fit at the task's deadline (or after
# `max_batches`) and sends the update it has, weighted by the share of the planned work
# done (FedProx's inexact solutions); "always" also sends a fit stopped because the
# device stopped being eligible.
PARTIAL_WORK = ("off", "deadline", "always")


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
    partial_work: str = "off"
    """One of PARTIAL_WORK: whether a fit stopped early sends what it learned."""
    max_batches: int = 0
    """A bound on local work: stop after this many batches (0: none). A fit so bounded
    counts as partial work: weighted by its share when `partial_work` is on."""
    seed: int = 0
    """Shuffling seed. Not sent: each device sets its own for every fit
    (edge_client/client.py, `training_seed`), or every round sees the same batch order."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train: epochs and batch_size must be >= 1")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.prox_mu >= 0):
            raise ValueError("train: need lr > 0, 0 <= momentum < 1, prox_mu >= 0")
        if self.partial_work not in PARTIAL_WORK:
            raise ValueError(f"train: partial_work must be one of {PARTIAL_WORK}, not "
                             f"{self.partial_work!r}")
        if isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int) \
                or self.max_batches < 0:
            raise ValueError(f"train: max_batches must be an int >= 0, not "
                             f"{self.max_batches!r}")

    def full_batches(self, samples: int) -> int:
        """The batches of a whole fit on `samples` samples, without max_batches."""
        return self.epochs * -(-samples // self.batch_size)

    def work_done(self, samples: int, batches: int) -> float:
        """The share of a whole fit that `batches` batches are, in [0, 1]."""
        return min(1.0, batches / max(1, self.full_batches(samples)))
