"""What the device session is told: link changes, decoded messages, the answers to the
actions it asked for, and ticks. Every call also passes the time (`Instant`): the session
never reads a clock, so tests script it."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_client.eligibility import Decision
from edge_client.outbox import OutboxEntry
from edge_client.session.held_model import HeldModel
from edge_client.shared.codecs import ErrorFeedback
from edge_client.shared.protocol import Ack, Invitation, ModelManifest, Task
from edge_client.shared.protocol.rollout import CanaryReport, Rollout
from edge_client.shared.protocol.tensors import Weights
from edge_client.training.trainer import FitResult


@dataclass(frozen=True)
class Instant:
    """The time of an event: `monotonic` for timers, `wall` (Unix) for what is sent."""

    monotonic: float
    wall: float


@dataclass(frozen=True)
class Resumed:
    """What the device kept on disk, read back at start (the model already installed)."""

    done_tasks: tuple[str, ...] = ()
    model: HeldModel | None = None
    residual: tuple[ErrorFeedback, int] | None = None
    outbox: tuple[OutboxEntry, ...] = ()
    following: int | None = None  # the production version of the last Rollout seen


@dataclass(frozen=True)
class LinkUp:
    """Connected to the broker (again): subscribe, say who we are, resend what is unacked."""


@dataclass(frozen=True)
class LinkDown:
    reason: str = ""


@dataclass(frozen=True)
class TaskReceived:
    task: Task


@dataclass(frozen=True)
class InvitationReceived:
    """The aggregator invites this device by name to one task (its own invite topic)."""

    invitation: Invitation


@dataclass(frozen=True)
class ManifestReceived:
    manifest: ModelManifest


@dataclass(frozen=True)
class ModelChunkReceived:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class AckReceived:
    ack: Ack


@dataclass(frozen=True)
class SecAggChunkReceived:
    payload: bytes  # one chunk of a message from the aggregator, signature not yet checked


@dataclass(frozen=True)
class EligibilityChecked:
    """The policy's decision, asked for (CheckEligibility) or checked between batches."""

    decision: Decision


@dataclass(frozen=True)
class ModelInstalled:
    """The trainer took the model (InstallModel succeeded)."""

    version: int


@dataclass(frozen=True)
class ModelRefused:
    """The trainer refused the model: its names or shapes differ."""

    version: int
    reason: str


@dataclass(frozen=True)
class FitFinished:
    """A fit StartFit asked for has ended; `shutting_down` when the app is stopping."""

    task_id: str
    result: FitResult
    weights: Weights = field(repr=False)  # the trained weights
    before: dict[str, float]  # the global model evaluated on the local data
    num_samples: int
    shutting_down: bool = False
    # what the device's own models measured (global/personal accuracy, its cluster),
    # sent with the update and on the status; empty in a plain federation
    metrics: dict[str, float] = field(default_factory=dict)
    # the tensors a dense update needs to carry (the rest of its delta is zero by
    # construction: personal layers, other clusters); None: all
    only: frozenset[str] | None = None


@dataclass(frozen=True)
class UpdateStored:
    nonce: str


@dataclass(frozen=True)
class UpdateNotStored:
    """The outbox refused the update: `full`, or the disk failed (`reason` says how)."""

    nonce: str
    reason: str
    full: bool = False


@dataclass(frozen=True)
class RolloutReceived:
    """The aggregator's Rollout: which version to serve, which candidate to evaluate."""

    rollout: Rollout


@dataclass(frozen=True)
class CanaryEvaluated:
    """The answer to EvaluateCanary: the figures to report, or why there are none."""

    report: CanaryReport | None
    reason: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passed: resends, eligibility re-checks and wake-ups fall due."""


@dataclass(frozen=True)
class ShuttingDown:
    """The app stops the device: say offline while the link is up."""


Event = (Resumed | LinkUp | LinkDown | TaskReceived | InvitationReceived | ManifestReceived
         | ModelChunkReceived
         | AckReceived | SecAggChunkReceived | EligibilityChecked | ModelInstalled
         | ModelRefused | FitFinished | UpdateStored | UpdateNotStored | Tick | ShuttingDown
         | RolloutReceived | CanaryEvaluated)
