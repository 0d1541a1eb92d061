"""What a device trains and serves when the federation personalises or clusters.

The global model the device receives is shared; this keeps, beside it, what is the
device's own: the personal layers (FedPer/FedRep), a whole personal model (Ditto), or the
cluster whose model fits its data best (IFCA). `fit` runs the task's training with the
app's Trainer and returns the weights the update is made of, laid out like the received
model (so the session's delta, codec and outbox work unchanged), plus the figures the
device reports: the global and personal accuracy on its held-out data, its cluster.
`serving` is what the device's predictor gets. Plain federations never build one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_client.shared.clusters import cluster_count, cluster_name, unstack, with_cluster
from edge_client.shared.personal import PersonalMode, PersonalSpec
from edge_client.shared.protocol import RemoteProtocolError, Task
from edge_client.shared.train_config import TrainConfig
from edge_client.shared.weights import Weights
from edge_client.training.trainer import FitResult, Trainer

log = logging.getLogger("edge_client.client")
Data = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class LocalFit:
    result: FitResult
    weights: Weights = field(repr=False)  # in the received model's layout
    before: dict[str, float]  # the model trained from, on the training data
    metrics: dict[str, float]  # global/personal accuracy, cluster: sent with the update
    serve: Weights | None = field(repr=False, default=None)  # the device's model now
    only: frozenset[str] | None = None  # the tensors whose delta can be non-zero


class LocalModels:
    """The device's own part of the models; one per device, kept in memory."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.spec: PersonalSpec | None = None  # the latest task's
        self.personal: Weights = {}  # layers: the personal tensors; ditto: a whole model
        self.cluster: int | None = None
        self.figures: dict[str, float] = {}

    def read_task(self, task: Task) -> None:
        """Follow the task's personalisation; a spec this device cannot follow is logged
        and the global model trained as in a plain federation."""
        spec = None
        if task.personal is not None:
            try:
                spec = PersonalSpec.from_wire(task.personal)
            except RemoteProtocolError as exc:
                log.error("%s: task %s: %s; training the global model only",
                          self.device_id, task.task_id, exc.reason)
        if spec != self.spec and spec is not None:
            log.info("%s: personalising (%s) from task %s on", self.device_id,
                     spec.mode.value, task.task_id)
        self.spec = spec

    def serving(self, received: Weights, trainer: Trainer, data: Data | None) -> Weights:
        """The model this device serves (and loads) for a received global model."""
        model = received
        if cluster_count(received):
            models = unstack(received)
            if data is not None:
                self.cluster = _lowest_loss(trainer, models, data)
            model = models[min(self.cluster or 0, len(models) - 1)]
        return self._personalised(model)

    def fit(self, trainer: Trainer, task: Task, received: Weights, config: TrainConfig,
            data: Data, holdout: Data, should_stop: Callable[[], bool]) -> LocalFit:
        self.read_task(task)
        x, y = data
        metrics: dict[str, float] = {}
        base = received
        if cluster_count(received):
            models = unstack(received)
            self.cluster = _lowest_loss(trainer, models, data)  # IFCA: the best fit
            base = models[self.cluster]
            metrics["cluster"] = float(self.cluster)
        spec = self.spec
        metrics["global_accuracy"] = _accuracy(trainer, base, holdout)
        start = self._personalised(base) if _is(spec, PersonalMode.LAYERS) else base
        trainer.set_weights(start)
        before = trainer.evaluate(x, y)
        result = trainer.fit(x, y, config, should_stop=should_stop)
        trained = trainer.get_weights()
        serve = base
        if spec is not None and spec.mode is PersonalMode.LAYERS:
            self.personal = {n: w for n, w in trained.items() if spec.is_personal(n)}
            serve = trained
            trained = {n: base[n] if spec.is_personal(n) else w for n, w in trained.items()}
        elif spec is not None and not result.stopped_early:  # Ditto's personal model
            serve = self._ditto(trainer, spec, base, data, config, should_stop)
        if spec is not None:
            metrics["personal_accuracy"] = _accuracy(trainer, serve, holdout)
        self.figures = metrics
        shared = frozenset(n for n in trained if spec is None or not spec.is_personal(n))
        if self.cluster is not None and cluster_count(received):
            trained = with_cluster(received, self.cluster, trained)
            shared = frozenset(cluster_name(self.cluster, n) for n in shared)
        only = None if shared == frozenset(received) else shared
        return LocalFit(result, trained, before, metrics, serve, only)

    def _ditto(self, trainer: Trainer, spec: PersonalSpec, base: Weights, data: Data,
               config: TrainConfig, should_stop: Callable[[], bool]) -> Weights:
        """One personal fit from the personal model, then the proximal pull toward the
        global model the round started from (PersonalSpec.lam)."""
        own = self.personal if _same_layout(self.personal, base) else base
        trainer.set_weights(own)
        trainer.fit(*data, dataclasses.replace(config, prox_mu=0.0), should_stop=should_stop)
        fitted = trainer.get_weights()
        lam = spec.lam
        self.personal = {n: ((fitted[n] + lam * base[n]) / (1.0 + lam)).astype(w.dtype)
                         for n, w in fitted.items()}
        return dict(self.personal)

    def _personalised(self, model: Weights) -> Weights:
        """`model` with this device's own part in it (none yet: `model` itself)."""
        spec = self.spec
        if spec is None or not self.personal:
            return model
        if spec.mode is PersonalMode.DITTO:
            return dict(self.personal) if _same_layout(self.personal, model) else model
        mine = {n: w for n, w in self.personal.items()
                if n in model and model[n].shape == w.shape}
        return {**model, **mine}


def _is(spec: PersonalSpec | None, mode: PersonalMode) -> bool:
    return spec is not None and spec.mode is mode


def _same_layout(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(a[n].shape == b[n].shape for n in a)


def _accuracy(trainer: Trainer, weights: Weights, holdout: Data) -> float:
    trainer.set_weights(weights)
    return float(trainer.evaluate(*holdout)["accuracy"])


def _lowest_loss(trainer: Trainer, models: list[Weights], data: Data) -> int:
    """IFCA's choice: the cluster model with the lowest loss on the local data."""
    losses = []
    for model in models:
        trainer.set_weights(model)
        loss = trainer.evaluate(*data)["loss"]
        losses.append(loss if np.isfinite(loss) else np.inf)
    return int(np.argmin(losses))
