"""A site's uplink: the device protocol toward the upper tier, with the site as the device.

The upper tier sees one device named after the site: it invites it, sends it models and
acks its updates, as any device. The device shell (EdgeClient) does everything it does for
a device (the outbox, resends until the ack, signatures, the codec the upper task asks
for, statuses and the last will) except training: when the session asks for a fit, the
uplink waits for the site's aggregate (aggregator.core.upper) made from the same upper
model, and hands it back as the fit's result, weighted by the site's samples. Each upper
model the session installs is adopted by the site's aggregator as its next version.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.core import SiteAggregate
from aggregator.service import Aggregator
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.session import actions as act
from edge_client.session.events import Event, FitFinished, Tick
from edge_client.session.update_maker import UpdateMaker
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.codecs.dp import DeviceDp
from edge_client.shared.protocol import Task, Update, Weights
from edge_client.training import FitResult, TrainConfig

log = logging.getLogger("fedge.tiers")


def uplink_config(site: AggregatorConfig, state_dir: Path | None = None) -> ClientConfig:
    """The site's [upper] table as the config of the one device it is upstairs."""
    upper = site.upper
    return ClientConfig(
        device_id=upper.site_id, federation=upper.federation, host=upper.host,
        port=upper.port, state_dir=state_dir or upper.uplink_dir(site.db_path),
        keepalive_s=upper.keepalive_s, ack_timeout_s=upper.ack_timeout_s,
        eligibility=EligibilityConfig(enabled=False), eligibility_check_s=1.0,
        no_task_warning_s=600.0, security=upper.security, broker_auth=upper.broker_auth)


class ModelHolder:
    """The Trainer the device shell drives: it holds the upper model and never fits (the
    site's devices do that)."""

    def __init__(self) -> None:
        self.weights: Weights = {}

    def get_weights(self) -> Weights:
        return {k: v.copy() for k, v in self.weights.items()}

    def set_weights(self, weights: Weights) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32).copy() for k, v in weights.items()}

    def fit(self, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        raise RuntimeError("a site's uplink never trains: its aggregate is the fit")

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {}


class SiteUpdateMaker(UpdateMaker):
    """The device's update maker, adding what the upper tier shows of a site (/api/sites):
    the device updates in the aggregate and the site versions it spans."""

    def __init__(self, device_id: str, before: UpdateMaker) -> None:
        super().__init__(device_id)
        self.feedback, self.feedback_version = before.feedback, before.feedback_version
        self.extra: dict[str, float] = {}

    def make(self, task: Task, base: Weights, trained: Weights, result: FitResult,
             before: dict[str, float], num_samples: int, codec: CodecConfig | None,
             dp: DeviceDp | None, created_at: float, work: float = 1.0,
             extra: dict[str, float] | None = None,
             only: frozenset[str] | None = None) -> Update:
        update = super().make(task, base, trained, result, before, num_samples, codec, dp,
                              created_at, work, extra, only)
        return dataclasses.replace(update, metrics={**update.metrics, **self.extra})


class SiteUplink(EdgeClient):
    """Run beside the site's Aggregator (fedge/tiers/site.py), on its own thread."""

    def __init__(self, config: ClientConfig, site: Aggregator) -> None:
        self.site = site  # first: resuming installs the held model, which the site adopts
        self._lock = threading.Lock()
        self._aggregate: SiteAggregate | None = None
        self._fit: act.StartFit | None = None
        self.aggregates_sent = 0
        super().__init__(config, ModelHolder(), np.zeros((1, 1), np.float32),
                         np.zeros(1, np.int64), on_model=self._upper_model)
        self.maker = SiteUpdateMaker(config.device_id, self.session.maker)
        self.session.maker = self.maker  # after resuming: it keeps the residual
        site.on_site_aggregate = self.offer

    def offer(self, aggregate: SiteAggregate) -> None:
        """From the site's loop thread: its aggregate since an upper model."""
        with self._lock:
            self._aggregate = aggregate
        self.events.put(Tick())  # wake the loop; it feeds the aggregate at its tick

    def run(self, stop: threading.Event | None = None) -> None:
        super().run(stop)
        task, model = self.session.task, self.session.downlink.model
        if task is not None and task.done and self.session.finished and model is not None:
            self.site.upper_finished(f"its task {task.task_id}", model.tensors, model.version)

    def _upper_model(self, version: int, arch: dict, weights: Weights) -> None:
        log.info("%s: the upper tier's model %d arrived; the site adopts it",
                 self.config.device_id, version)
        self.site.adopt(weights, version)

    def _do(self, actions: list[act.Action]) -> None:
        for action in actions:
            if isinstance(action, act.StartFit):
                with self._lock:
                    self._fit = action
                log.info("%s: upper task %s: the site's aggregate from upper model %d goes "
                         "up when it is made", self.config.device_id, action.task.task_id,
                         action.task.model_version)
                self.site.upper_asks(action.task.model_version)
                self._deliver()
            else:
                super()._do([action])

    def _feed(self, event: Event) -> None:
        super()._feed(event)
        if isinstance(event, Tick):
            self._deliver()

    def _deliver(self) -> None:
        """Hand the waiting fit its aggregate once both are from the same upper model; drop
        a fit whose task the upper tier has replaced."""
        with self._lock:
            fit, aggregate = self._fit, self._aggregate
            if fit is None:
                return
            task = self.session.task
            replaced = task is not None and task.task_id != fit.task.task_id
            ready = aggregate is not None and aggregate.upper_version == fit.task.model_version
            if ready or replaced:
                self._fit = None
        if ready:
            assert aggregate is not None
            result = FitResult(num_samples=aggregate.samples, loss=aggregate.train_loss,
                               batches=aggregate.versions, train_s=0.0, stopped_early=False)
            self.aggregates_sent += 1
            self.maker.extra = {"site_updates": float(aggregate.devices),
                                "site_versions": float(aggregate.versions)}
            super()._feed(FitFinished(fit.task.task_id, result, aggregate.weights, {},
                                      aggregate.samples))
        elif replaced:
            log.info("%s: upper task %s was replaced before the site's aggregate was made",
                     self.config.device_id, fit.task.task_id)
            result = FitResult(0, float("nan"), 0, 0.0, stopped_early=True)
            super()._feed(FitFinished(fit.task.task_id, result, fit.weights, {}, 0,
                                      shutting_down=True))
