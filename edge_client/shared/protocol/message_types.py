"""The messages of the fedge protocol, as frozen dataclasses.

Their wire encoding is in messages.py (encode, decode) and decoding.py (the checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_client.shared.protocol.cohort import Cohort
from edge_client.shared.protocol.drift import DriftReport
from edge_client.shared.protocol.errors import LocalProtocolError
from edge_client.shared.protocol.states import ACK_STATUSES, AckStatus
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.train_config import TrainConfig


@dataclass(frozen=True)
class Task:
    """What the aggregator wants now; retained on the task topic."""

    task_id: str
    mode: str  # RoundMode: "sync" or "async"
    round: int
    model_version: int
    train: TrainConfig
    deadline: float | None = None  # unix time; updates after it are late (sync mode)
    # Who may take part: the devices `invited` by name and those in the `cohort` both
    # sides derive from a seed (cohort.py); when both are None, every device. Secure
    # rounds and the done task list names only; plain rounds draw a cohort, and the
    # proven devices that top the round up get an Invitation each on their own topic
    # (older aggregators named them here, which still works).
    invited: tuple[str, ...] | None = None
    chunk_size: int = 65536
    done: bool = False  # the federation has finished; devices may stop
    codec: dict[str, Any] | None = None  # how to encode updates (codec config); None: dense
    dp: dict[str, Any] | None = None  # distributed DP: clip and noise (codecs.dp.DeviceDp)
    secagg: dict[str, Any] | None = None  # secure aggregation round (secagg.task.SecAggTask)
    cohort: Cohort | None = None
    # Personalisation (edge_client.shared.personal.PersonalSpec) and the number of
    # clustered model lines (edge_client.shared.clusters); None: off. Older devices
    # ignore both and train the global model.
    personal: dict[str, Any] | None = None
    clusters: int | None = None
    # The newest update envelope the aggregator reads (2: lean_update.py); 1 from
    # aggregators before it. Devices send the newer of it and their own, so either side
    # may be upgraded first.
    update_version: int = 1
    # The aggregator's own record of the candidates it invited when it planned the task,
    # by cohort or by Invitation (no-shows, what a round waits for, whom it accepts);
    # never sent, None once decoded.
    members: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def invites(self, device_id: str) -> bool:
        if self.invited is None and self.cohort is None:
            return True
        if self.invited is not None and device_id in self.invited:
            return True
        if self.cohort is not None and self.cohort.includes(device_id):
            return True
        # the aggregator's side: those it sent an Invitation (a device checks its own)
        return self.members is not None and device_id in self.members

    def expected(self) -> tuple[str, ...] | None:
        """The devices the aggregator counts on: the cohort's members as planned (with
        those named), else the names; None when every device may come, or when a
        cohort's plan is not known (a task read back after a restart)."""
        if self.cohort is None:
            return self.invited
        return self.members

    def invited_count(self) -> int | None:
        """How many devices were invited; None: every device may come."""
        named = len(self.invited) if self.invited is not None else 0
        if self.cohort is None:
            return None if self.invited is None else named
        # members: also those invited by Invitation, when the aggregator's plan is known
        return max(self.cohort.size + named, len(self.members or ()))


@dataclass(frozen=True)
class Invitation:
    """Retained on one device's invite topic: take part in task `task_id`.

    A plain round tops its cohort up with proven devices by name (cohort.py, Draw.extra);
    naming them here, one small message per device, keeps the retained task the same
    size whatever the fleet or the round. Cleared when the round closes or the device
    answers.
    """

    task_id: str
    device_id: str  # the device it is for: an invitation moved to another topic is refused


@dataclass(frozen=True)
class Update:
    """One device's contribution: the delta from the global model it trained from."""

    device_id: str
    task_id: str
    nonce: str
    base_version: int
    num_samples: int
    tensors: Weights = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    codec: dict[str, Any] | None = None  # None: `tensors` holds the dense delta
    blob: bytes = field(default=b"", repr=False)  # the encoded delta when `codec` is set


@dataclass(frozen=True)
class Model:
    """A global model version: the blob whose chunks follow a manifest."""

    version: int
    tensors: Weights = field(repr=False)
    arch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelManifest:
    """Retained on the model topic: which model is current and how to fetch it."""

    version: int
    sha256: str
    size: int
    chunk_count: int
    created_at: float = 0.0
    delta: DeltaInfo | None = None  # a smaller way to get here from the previous version
    # The retained deltas, oldest first, the last leading to `version`: a device that
    # skipped versions applies them in turn. None: not sent (older aggregators).
    chain: tuple[DeltaInfo, ...] | None = None


@dataclass(frozen=True)
class DeltaInfo:
    """The change from `base_version`, encoded with `codec`, published beside the model.

    A device holding `base_version` adds the decoded delta, then checks that the result
    encodes to `model_sha256` (the manifest's sha256 for the last step): it gets the
    aggregator's model bit for bit, or falls back to the full model.
    """

    base_version: int
    sha256: str  # of the delta blob
    size: int
    chunk_count: int
    codec: dict[str, Any]
    model_sha256: str | None = None  # of the model it leads to; required in a chain

    @property
    def version(self) -> int:
        """The model version this delta leads to."""
        return self.base_version + 1


@dataclass(frozen=True)
class Ack:
    """The aggregator's answer to one update: stored (accepted, duplicate, late) or not."""

    status: AckStatus
    task_id: str = ""
    nonce: str = ""
    reason: str = ""
    next_checkin_s: float | None = None

    def __post_init__(self) -> None:
        # A status given as its string becomes the Enum; an unknown one is our own bug.
        try:
            object.__setattr__(self, "status", AckStatus(self.status))
        except ValueError:
            raise LocalProtocolError(f"ack: unknown status {self.status!r}") from None

    @property
    def final(self) -> bool:
        """Every status is final: the device may drop the update from its outbox."""
        return self.status in ACK_STATUSES


@dataclass(frozen=True)
class Status:
    """A device's presence and eligibility; retained, and its last will says offline."""

    device_id: str
    online: bool
    eligible: bool = True
    reason: str = ""
    model_version: int | None = None
    time: float = 0.0
    battery_pct: float | None = None
    # A random id per run of the device: two clients with one device id show as two
    # sessions taking turns. "" from older devices.
    session: str = ""
    # Personalised and clustered federations (docs/heterogeneity.md): the global model
    # and the device's own model on its held-out data at its latest fit, and the cluster
    # it chose. None: not measured (older devices, or personalisation off).
    global_accuracy: float | None = None
    personal_accuracy: float | None = None
    cluster: int | None = None
    # Drift scores of its Predictor (edge_client/drift/); None from devices that keep none.
    drift: DriftReport | None = None


Message = Task | Update | Model | ModelManifest | Ack | Status | Invitation
