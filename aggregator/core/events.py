"""What the aggregator core is told: one event at a time, each with the time it happened.

The core never reads a clock: the shell (aggregator/service.py) stamps every event with
an `Instant` and sends a `Tick` whenever it has nothing else, so tests can script time.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.strategy.folding import FlatUpdate
from edge_client.shared.protocol import Update, Weights


@dataclass(frozen=True)
class Instant:
    """A moment on both clocks: `wall` (time.time(), for deadlines devices see and for
    stored times) and `mono` (time.monotonic(), for durations and local timers)."""

    wall: float
    mono: float


@dataclass(frozen=True)
class LinkUp:
    """Connected to the broker (again): subscribe, republish what is retained."""

    at: Instant


@dataclass(frozen=True)
class LinkDown:
    at: Instant
    reason: str


@dataclass(frozen=True)
class UpdateChunk:
    """One chunk on `fedge/<fed>/update/<device>`; the core reassembles the update."""

    topic: str
    payload: bytes
    retained: bool
    at: Instant


@dataclass(frozen=True)
class StatusMessage:
    """A device's status on `fedge/<fed>/status/<device>` (retained ones included)."""

    topic: str
    payload: bytes
    retained: bool
    at: Instant


@dataclass(frozen=True)
class SecAggChunk:
    """One chunk of a secure-aggregation message on `fedge/<fed>/secagg/<device>`."""

    topic: str
    payload: bytes
    at: Instant


@dataclass(frozen=True)
class CanaryMessage:
    """A canary device's report on `fedge/<fed>/canary/<device>` (docs/lifecycle.md)."""

    topic: str
    payload: bytes
    at: Instant


@dataclass(frozen=True)
class SetTraining:
    """An operator's request, queued onto the service loop like any other event."""

    running: bool


@dataclass(frozen=True)
class SetStrategy:
    name: str


@dataclass(frozen=True)
class Tick:
    """Time passed: close rounds that are due, open the next, say what we wait for.
    `connected`: whether the MQTT link is up right now."""

    at: Instant
    connected: bool


@dataclass(frozen=True)
class VerifiedUpdate:
    """An update an ingest worker reassembled, verified and decoded (parallel ingest,
    aggregator/ingest_workers.py): the core checks and stores it as if it had the chunks.
    `payload` is the verified message, as stored."""

    topic: str
    device: str
    transfer: str
    payload: bytes
    update: Update
    values: FlatUpdate
    at: Instant


@dataclass(frozen=True)
class RefusedUpload:
    """An upload an ingest worker refused (`reason`); `verified`: its signature held, so
    the device counts as having sent something (as the single-process path counts it)."""

    topic: str
    device: str
    transfer: str
    reason: str
    verified: bool
    at: Instant


@dataclass(frozen=True)
class AdoptModel:
    """The upper tier's model `upper_version` (a site, docs/tiers.md): it becomes the
    site's next version, and the site's rounds go on from it."""

    weights: Weights
    upper_version: int
    at: Instant


@dataclass(frozen=True)
class UpperAsks:
    """The upper tier invites the site to a round from its model `upper_version`: the
    site runs its rounds for it (an uninvited site trains for nothing)."""

    upper_version: int
    at: Instant


@dataclass(frozen=True)
class UpperFinished:
    """The upper tier says training is over, at its model `upper_version`: the site
    ends on that model too, and tells its devices so."""

    reason: str
    weights: Weights
    upper_version: int
    at: Instant


Event = (LinkUp | LinkDown | UpdateChunk | StatusMessage | SecAggChunk | SetTraining
         | SetStrategy | Tick | VerifiedUpdate | RefusedUpload | AdoptModel | UpperAsks
         | UpperFinished | CanaryMessage)
