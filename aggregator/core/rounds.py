"""One interface for a round, two implementations: plain updates or secure aggregation.

The core opens a task, hands a driver what arrives, asks it at every tick whether the
round should go on, make a version or start again, and takes the round's contributions
from it. Where plain and secure rounds differ, the difference lives behind this
interface (aggregator/core/plain_round.py, aggregator/core/secure_driver.py), not in
branches of the core or the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from aggregator.core.actions import Action
from aggregator.core.events import Instant
from aggregator.core.pending import PendingUpdates
from aggregator.strategy import Contribution
from aggregator.strategy.folding import Accumulator
from edge_client.shared.protocol import Task, Weights


class Decision(Enum):
    WAIT = "wait"
    AGGREGATE = "aggregate"  # make a version from `RoundDriver.result`
    ABORT = "abort"  # too few: the round starts again


@dataclass(frozen=True)
class RoundStep:
    decision: Decision = Decision.WAIT
    outgoing: tuple[Action, ...] = ()  # messages the round relays now
    reason: str = ""  # with ABORT: why, as logged


@dataclass(frozen=True)
class RoundResult:
    """A finished round as the strategy takes it, and its facts for the version's info."""

    contributions: list[Contribution]
    updates: int
    update_bytes: int
    max_train_s: float
    devices: list[str]
    evaluation: dict[str, float] = field(default_factory=dict)  # the devices' own metrics
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "secagg"
    # the round's running sum (mean-based strategies): the version comes from it, not
    # from `contributions`
    folded: Accumulator | None = None


class RoundDriver(Protocol):
    """What a kind of round does; see the module docstring."""

    def on_link_up(self) -> list[Action]:
        """Subscriptions and messages to send again after a (re)connect."""
        ...

    def refusal(self) -> str | None:
        """Why plain updates are refused in this kind of round, or None."""
        ...

    def proven_matters(self) -> bool:
        """Whether invitations may be topped up with proven devices."""
        ...

    def check_strategy(self, name: str) -> None:
        """ValueError if this kind of round cannot aggregate with strategy `name`."""
        ...

    def open(self, task: Task, size: int, at: Instant) -> Task:
        """The task as published: the driver may add its own setup to it."""
        ...

    def on_message(self, device: str, payload: bytes, at: Instant) -> str | None:
        """A secure-aggregation chunk; the rejection reason, or None."""
        ...

    def tick(self, task: Task, pending: PendingUpdates, at: Instant) -> RoundStep:
        ...

    def abort_line(self, task: Task, pending: PendingUpdates) -> str:
        """The log line for an aborted round (after participation grew its deadline)."""
        ...

    def result(self, pending: PendingUpdates, version: int,
               global_weights: Weights) -> RoundResult:
        ...

    def not_used(self, task_id: str, reason: str) -> None:
        """The round's sum made no version (the strategy refused it)."""
        ...
