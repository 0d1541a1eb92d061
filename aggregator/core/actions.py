"""What the aggregator core asks its shell to do; the shell does it in the order given."""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.core.snapshot import ServiceSnapshot
from edge_client.shared.protocol import Ack, Task


@dataclass(frozen=True)
class Publish:
    """Send `payload` to `topic` (model chunks, manifests, secure-aggregation relays)."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class SendAck(Publish):
    """An ack (accepted, late, duplicate or rejected) to one device, already signed."""

    ack: Ack | None = None


@dataclass(frozen=True)
class PublishTask(Publish):
    """The retained task every device reads (a round, an async task, or `done`)."""

    task: Task | None = None


@dataclass(frozen=True)
class ClearRetained:
    """Publish an empty retained message: the broker forgets what it held there."""

    topic: str


@dataclass(frozen=True)
class Subscribe:
    topic: str


@dataclass(frozen=True)
class VersionReport:
    """What the service tells its owner (the demo's progress bar) after each version."""

    version: int
    round: int
    updates: int
    round_wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionMade:
    """A model version is stored and published: tell the owner, with the snapshot of
    that moment."""

    report: VersionReport
    snapshot: ServiceSnapshot


Action = Publish | ClearRetained | Subscribe | VersionMade
