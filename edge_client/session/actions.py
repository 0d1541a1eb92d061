"""What the device session asks its shell to do. Most are fire-and-forget; four want an
answer fed back at once as an event (see `DeviceSession`):

    CheckEligibility -> EligibilityChecked      InstallModel -> ModelInstalled | ModelRefused
    StartFit         -> FitFinished             StoreUpdate  -> UpdateStored | UpdateNotStored
    EvaluateCanary   -> CanaryEvaluated
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edge_client.session.held_model import HeldModel
from edge_client.shared.codecs import ErrorFeedback
from edge_client.shared.protocol import Task
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.train_config import TrainConfig


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes = field(repr=False)
    retain: bool = False


@dataclass(frozen=True)
class PublishUpdate:
    """An update's chunks, in order; stop at the first the link refuses (it is resent in
    full after the next connect)."""

    nonce: str
    topic: str
    chunks: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class Subscribe:
    topic: str


@dataclass(frozen=True)
class Unsubscribe:
    topic: str


class CheckPurpose(Enum):
    """Why the session wants a fresh eligibility decision: what it does with the answer."""

    RECHECK = "recheck"  # the periodic look while idle
    TASK = "task"  # a task arrived: count a round this device sits out
    BEFORE_FIT = "before fit"  # about to train


@dataclass(frozen=True)
class CheckEligibility:
    purpose: CheckPurpose


@dataclass(frozen=True)
class InstallModel:
    """Load the model into the trainer (and hand it to the app's on_model)."""

    version: int
    tensors: Weights = field(repr=False)
    arch: dict


@dataclass(frozen=True)
class StartFit:
    """Train from `weights` on the device's data; check eligibility between batches."""

    task: Task
    weights: Weights = field(repr=False)
    config: TrainConfig


@dataclass(frozen=True)
class StopFit:
    """Stop the running fit at its next batch boundary."""


@dataclass(frozen=True)
class StoreUpdate:
    """Write the update to the outbox before it is first published."""

    nonce: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class RemoveUpdate:
    nonce: str


@dataclass(frozen=True)
class SetAsideUpdate:
    """An outbox entry whose content is unusable: move it out of the way, keeping it."""

    nonce: str
    why: str


@dataclass(frozen=True)
class SaveModel:
    version: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True)
class SaveTasks:
    done_tasks: tuple[str, ...]
    model_version: int | None


@dataclass(frozen=True)
class SaveResidual:
    feedback: ErrorFeedback = field(repr=False)
    version: int | None


@dataclass(frozen=True)
class SleepUntil:
    """Go off the broker until `monotonic` (the aggregator's next check-in)."""

    monotonic: float


@dataclass(frozen=True)
class Wake:
    """The check-in time came: connect again."""


@dataclass(frozen=True)
class ServeModel:
    """Hand this version to the app's on_model (a Predictor): it serves it from now on."""

    version: int
    arch: dict
    tensors: Weights = field(repr=False)


@dataclass(frozen=True)
class EvaluateCanary:
    """Evaluate `candidate` against `production` on held-out data; answer CanaryEvaluated."""

    candidate: HeldModel = field(repr=False)
    production: HeldModel = field(repr=False)


@dataclass(frozen=True)
class SaveRollout:
    """Remember that this device follows a rollout, and its production version."""

    production: int


Action = (Publish | PublishUpdate | Subscribe | Unsubscribe | CheckEligibility | InstallModel
          | StartFit | StopFit | StoreUpdate | RemoveUpdate | SetAsideUpdate | SaveModel
          | SaveTasks | SaveResidual | SleepUntil | Wake | ServeModel | EvaluateCanary
          | SaveRollout)
