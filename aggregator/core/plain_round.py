"""The round driver for plain updates: sync rounds or the async buffer decide, by count
and deadline, when the stored updates make a version (aggregator/participation.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action
from aggregator.core.events import Instant
from aggregator.core.pending import PendingRecord, PendingUpdates
from aggregator.core.rounds import Decision, RoundResult, RoundStep
from aggregator.fairness import fairness_of
from aggregator.narrator import Narrator, Waiting
from aggregator.participation import Participation
from aggregator.personalize import personal_info
from aggregator.strategy import Contribution
from aggregator.strategy.contribution import weight_factor
from aggregator.strategy.folding import HeldRows
from edge_client.shared.protocol import Task, Update, Weights

_DECISIONS = {d.value: d for d in Decision}


class PlainRound:
    def __init__(self, config: AggregatorConfig, participation: Participation,
                 narrator: Narrator) -> None:
        self.config = config
        self.participation = participation
        self.narrator = narrator

    def on_link_up(self) -> list[Action]:
        return []

    def refusal(self) -> str | None:
        return None

    def proven_matters(self) -> bool:
        return True

    def check_strategy(self, name: str) -> None:
        """Every strategy can aggregate plain updates."""

    def open(self, task: Task, size: int, at: Instant) -> Task:
        return task

    def on_message(self, device: str, payload: bytes, at: Instant) -> str | None:
        return "this federation does not use secure aggregation"  # not subscribed

    def tick(self, task: Task, pending: PendingUpdates, at: Instant) -> RoundStep:
        decision = _DECISIONS[self.participation.due(len(pending), task, at.wall)]
        if decision is Decision.WAIT:
            self.narrator.waiting(Waiting.UPDATES, lambda: self.narrator.for_updates(
                task, pending.devices(), updates_wanted(self.config)))
        return RoundStep(decision)

    def abort_line(self, task: Task, pending: PendingUpdates) -> str:
        return (f"round {task.round} reached its deadline with {len(pending)} of "
                f"{self.config.sync.target_updates} updates; starting it again with a "
                f"{self.participation.timeout_s:.3g} s deadline")

    def result(self, pending: PendingUpdates, version: int,
               global_weights: Weights) -> RoundResult:
        """The round's running sum (mean-based strategies), or its held rows as
        contributions in device order (the strategies that need every update)."""
        records = pending.records
        folded = pending.accumulator()
        contributions: list[Contribution] = []
        if isinstance(folded, HeldRows):
            contributions = folded.contributions(global_weights)
        return RoundResult(
            contributions, updates=len(records), update_bytes=pending.message_bytes(),
            max_train_s=max((r.metrics.get("train_s", 0.0) for r in records), default=0.0),
            devices=sorted({r.device_id for r in records}),
            evaluation=device_evaluation(records),
            extra={"fairness": fairness_of(records, self.config.fairness.accuracy_floor,
                                           self._factor).to_json(),
                   **personal_info(records)},
            folded=None if isinstance(folded, HeldRows) else folded)

    def _factor(self, metrics: Mapping[str, Any]) -> float:
        """The contribution weighting's factor on an update's samples."""
        s = self.config.strategy
        return weight_factor(s.weighting, s.weighting_q, metrics)

    def not_used(self, task_id: str, reason: str) -> None:
        """Plain updates stay stored; nothing else to record."""


def updates_wanted(config: AggregatorConfig) -> int:
    """Updates that make a version: the sync target, or the async buffer."""
    if config.mode == "sync":
        return config.sync.target_updates
    return config.async_.buffer_size


def updates_per_version(config: AggregatorConfig) -> int:
    """The most updates one version is planned to hold: the sync round's invitations
    (target x (1 + over_selection)), or the async buffer."""
    if config.mode == "sync":
        return math.ceil(config.sync.target_updates * (1 + config.sync.over_selection))
    return config.async_.buffer_size


def device_evaluation(updates: Sequence[PendingRecord | Update]) -> dict[str, float]:
    """The previous model on the devices' own data, sample-weighted: quality measured
    where the data is. Devices that sent no such metric are left out."""
    rows = [(u.num_samples, u.metrics["local_accuracy"], u.metrics.get("local_loss"))
            for u in updates if np.isfinite(u.metrics.get("local_accuracy", np.nan))]
    if not rows:
        return {}
    samples = sum(n for n, _, _ in rows)
    out = {"device_accuracy": sum(n * a for n, a, _ in rows) / samples}
    losses = [(n, loss) for n, _, loss in rows if loss is not None and np.isfinite(loss)]
    if losses:
        out["device_loss"] = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
    return out
