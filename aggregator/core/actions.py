"""What the aggregator core asks its shell to do; the shell does it in the order given."""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.core.snapshot import ServiceSnapshot
from edge_client.shared.protocol import Ack, Task, Weights


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




@dataclass(frozen=True)
class SiteAggregate:
    """A site's work since it adopted the upper tier's model `upper_version`: its model
    now (`weights`, site version `site_version`) and the samples behind it. The shell
    hands it to the site's uplink, which sends `weights` minus the upper model, weighted
    by `samples`, as one device's update (docs/tiers.md)."""

    upper_version: int
    site_version: int
    weights: Weights = field(default_factory=dict)
    samples: int = 0
    versions: int = 0
    train_loss: float = 0.0
    devices: int = 0


Action = Publish | ClearRetained | Subscribe | VersionMade | SiteAggregate
