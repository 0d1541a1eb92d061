"""Turning a finished fit into the update a device sends: the delta from the global
model, the task's distributed-DP clip and noise, and its codec with error feedback.

Pure computation; the residual carried between rounds lives here and is saved by the
session (SaveResidual) only once the update it shaped is in the outbox.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from edge_client.shared.codecs import CodecConfig, ErrorFeedback, encode_vector
from edge_client.shared.codecs.adaptive import codec_for_update
from edge_client.shared.codecs.dp import DeviceDp, clip_and_noise
from edge_client.shared.codecs.frame import FORMAT_VERSION, LEAN_FORMAT_VERSION
from edge_client.shared.portable_random import PortableRandom
from edge_client.shared.protocol import Task, Update
from edge_client.shared.protocol.lean_update import LEAN_UPDATE_VERSION
from edge_client.shared.protocol.seeds import training_seed, update_seed
from edge_client.shared.protocol.tensors import Weights, flatten_sorted, unflatten_like
from edge_client.training.trainer import FitResult

MAX_RESIDUAL_AGE = 20  # model versions after which an error-feedback residual is dropped


@dataclass(frozen=True)
class FeedbackSnapshot:
    """The residual as it stood, to put back if the update made from it is not kept."""

    feedback: ErrorFeedback | None
    residual: np.ndarray | None
    version: int | None


def blob_format(task: Task) -> int:
    """The lean blob frame with the lean update envelope: only to an aggregator that
    reads them (Task.update_version)."""
    return LEAN_FORMAT_VERSION if task.update_version >= LEAN_UPDATE_VERSION else FORMAT_VERSION


class UpdateMaker:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.feedback: ErrorFeedback | None = None
        self.feedback_version: int | None = None
        self._rng = PortableRandom(0)  # reseeded per update in make()
        self._dp_rng: np.random.Generator | None = None  # made by the first DP update

    def resume(self, residual: tuple[ErrorFeedback, int] | None) -> None:
        if residual is not None:
            self.feedback, self.feedback_version = residual

    def forget(self) -> None:
        self.feedback, self.feedback_version = None, None

    def snapshot(self) -> FeedbackSnapshot:
        feedback = self.feedback
        return FeedbackSnapshot(feedback, None if feedback is None else feedback.residual,
                                self.feedback_version)

    def restore(self, snapshot: FeedbackSnapshot) -> None:
        if snapshot.feedback is not None and snapshot.residual is not None:
            snapshot.feedback.residual = snapshot.residual  # record() rebinds: the old array
        self.feedback, self.feedback_version = snapshot.feedback, snapshot.version

    def seed(self, task: Task) -> int:
        """The fit's shuffling seed, also the seed of this round's stochastic rounding."""
        return training_seed(self.device_id, task.round, task.model_version)

    def make(self, task: Task, base: Weights, trained: Weights, result: FitResult,
             before: dict[str, float], num_samples: int, codec: CodecConfig | None,
             dp: DeviceDp | None, created_at: float, work: float = 1.0,
             extra: dict[str, float] | None = None,
             only: frozenset[str] | None = None) -> Update:
        """The update of a fit from `base`. `work` < 1: a partial fit's share of the whole
        (partial_work), which scales the sample count the aggregator weights it by.
        `extra`: figures sent with it (a personalised or clustered device's); `only`: the
        tensors whose delta can be non-zero (a dense update leaves the rest out).
        ValueError: under DP, a diverged fit gives no update that can be noised."""
        self._rng = PortableRandom(self.seed(task))  # stochastic rounding, reproducible
        delta = {name: (trained[name] - base[name]).astype(np.float32) for name in base}
        # How the global model does on this device's own data: reported with the update,
        # so the gateway sees quality where the data is (the data itself stays here).
        update = Update(device_id=self.device_id, task_id=task.task_id,
                        nonce=os.urandom(16).hex(), base_version=task.model_version,
                        num_samples=num_samples if work >= 1 else max(1, round(num_samples
                                                                              * work)),
                        tensors=delta,
                        metrics={"train_loss": result.loss, "train_s": result.train_s,
                                 "local_accuracy": before.get("accuracy", float("nan")),
                                 "local_loss": before.get("loss", float("nan")),
                                 **({"work_done": work} if work < 1 else {}),
                                 **(extra or {})},
                        created_at=created_at)
        if dp is not None:
            update = self.add_dp_noise(update, dp)
        if codec is None and dp is None and only is not None:  # the rest is zero: not sent
            return dataclasses.replace(update, tensors={n: t for n, t in delta.items()
                                                        if n in only})
        return update if codec is None else self._compress(update, codec, task)

    def add_dp_noise(self, update: Update, dp: DeviceDp) -> Update:
        """Distributed DP: the whole delta clipped to C, plus this device's noise share.
        Gaussian noise from numpy.random, loaded only by a federation that asks for DP."""
        if self._dp_rng is None:
            self._dp_rng = np.random.default_rng()  # OS entropy: DP noise nobody can redraw
        vector, _ = clip_and_noise(flatten_sorted(update.tensors), dp, self._dp_rng)
        return dataclasses.replace(update, tensors=unflatten_like(vector, update.tensors),
                                   metrics={**update.metrics, **dp.metrics()})

    def _compress(self, update: Update, codec: CodecConfig, task: Task) -> Update:
        """Encode the delta with the task's codec, carrying what is left out forward. An
        adaptive codec picks this update's top-k fraction, which the update declares."""
        vector = flatten_sorted(update.tensors)
        feedback = None
        if codec.error_feedback:
            feedback = self._feedback_for(vector.size, update.base_version)
            vector = feedback.compensate(vector)
        codec = codec_for_update(vector, codec)
        encoded = encode_vector(vector, codec, update_seed(update.task_id, update.device_id),
                                self._rng, frame=blob_format(task))
        if feedback is not None:
            feedback.record(vector, encoded.sent)
            self.feedback_version = update.base_version
        return dataclasses.replace(update, tensors={}, codec=codec.to_wire(),
                                   blob=encoded.blob)

    def _feedback_for(self, size: int, version: int) -> ErrorFeedback:
        """The residual, unless it belongs to another model shape or is too old to help."""
        stale = (self.feedback_version is None
                 or version - self.feedback_version > MAX_RESIDUAL_AGE)
        if self.feedback is None or self.feedback.residual.size != size or stale:
            self.feedback = ErrorFeedback(size)
        return self.feedback
