"""A finished round becomes a model version: the strategy, the downlink encoder, the
evaluation, the store, then the model on the broker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from aggregator.anomalies import AnomalyWatch, clipping_of
from aggregator.clusters import evaluate_clusters
from aggregator.core.actions import Action, VersionMade, VersionReport
from aggregator.core.events import Instant
from aggregator.core.models import ModelPublisher
from aggregator.core.rounds import RoundDriver, RoundResult
from aggregator.core.state import CoreState
from aggregator.downlink import DownlinkEncoder
from aggregator.narrator import Narrator
from aggregator.participation import Participation
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.store import Store
from aggregator.strategy import Strategy
from aggregator.version_record import VersionRecord
from edge_client.shared.clusters import cluster_count
from edge_client.shared.protocol import Model, Weights, decode, encode
from edge_client.shared.protocol.chunking import sha256_hex

log = logging.getLogger("aggregator.service")
Evaluate = Callable[[Weights], dict[str, float]]
Tamper = Callable[[int, Weights], Weights]  # the demo's corrupted candidate (fedge/demo.py)


class VersionMaker:
    def __init__(self, store: Store, strategy: Strategy, evaluate: Evaluate | None,
                 downlink: DownlinkEncoder, publisher: ModelPublisher,
                 participation: Participation, privacy: ServicePrivacy,
                 anomalies: AnomalyWatch, narrator: Narrator, driver: RoundDriver) -> None:
        self.store = store
        self.strategy = strategy  # replaced by the operator's SetStrategy
        self.evaluate = evaluate
        self.downlink = downlink
        self.publisher = publisher
        self.participation = participation
        self.privacy = privacy
        self.anomalies = anomalies
        self.narrator = narrator
        self.driver = driver
        self.after_made: Callable[[int, Instant], list[Action]] = lambda v, at: []
        self.tamper: Tamper | None = None  # only `fedge demo --bad-candidate` sets it

    def make(self, state: CoreState, at: Instant) -> list[Action]:
        """The next version from the open round; none (and the round starts again) if
        the strategy refuses what it got."""
        task = state.task
        assert task is not None
        result = self.driver.result(state.pending, state.version, state.weights)
        try:
            lr = self.participation.server_lr
            proposed = (result.folded.finish(state.weights, lr) if result.folded is not None
                        else self.strategy.aggregate(state.weights, result.contributions, lr))
        except ValueError as exc:  # e.g. every update non-finite, or an overflow
            log.error("aggregator: version %d not made: %s; starting the round again",
                      state.version + 1, exc)
            if task.mode == "sync":
                self.store.abort_task(task.task_id)
            self.driver.not_used(task.task_id, f"version not made: {exc}")
            state.pending.clear()
            state.task = None
            return []
        version = state.version + 1
        if self.tamper is not None:
            proposed = self.tamper(version, proposed)
        new_weights, delta = self.downlink.step(state.weights, proposed, version)
        round_wall_s = at.mono - state.task_opened
        metrics = self._evaluate(new_weights)
        clipping = clipping_of(self.strategy, result.contributions)
        blob = encode(Model(version=version, tensors=self.publisher.wire(new_weights),
                            arch=state.arch))
        info = self._info(state, result, metrics, len(blob),
                          len(delta) if delta else 0, round_wall_s)
        close = task.task_id if task.mode == "sync" else None
        self.store.add_model(version, blob, sha256_hex(blob), info,
                             used=state.pending.records, close_task=close, delta=delta,
                             residual=self.downlink.state())
        self.participation.version_made()
        state.history.append(VersionRecord.from_info(version, at.wall, info))
        self.anomalies.after_version(version, info["devices"], clipping)
        self.narrator.version_made(version, info)
        report = VersionReport(version, task.round, info["updates"], round_wall_s, metrics)
        state.weights, state.version = new_weights, version
        state.pending.clear()
        state.task = None
        staged = self.after_made(version, at)  # its stage (aggregator/lifecycle/)
        return [*self.publisher.model(version, new_weights, state.arch), *staged,
                VersionMade(report, state.snapshot())]

    def copy(self, state: CoreState, source: int, at: Instant) -> tuple[int, list[Action]]:
        """The next version with the weights of stored version `source` (a rollback or an
        operator's promotion of an older version): the open round, if any, is dropped
        and the next one trains from the copy."""
        model = decode(self.store.model_blob(source), expect=Model)
        task = state.task
        if task is not None:
            log.info("aggregator: round %d dropped: the next one trains from the copy of "
                     "version %d", task.round, source)
            self.store.abort_task(task.task_id)
            self.driver.not_used(task.task_id, f"version {source} restored")
            state.pending.clear()
            state.task = None
        version = state.version + 1
        weights = self.downlink.start_over(
            {k: v.astype(np.float32) for k, v in model.tensors.items()})
        blob = encode(Model(version=version, tensors=self.publisher.wire(weights),
                            arch=state.arch))
        metrics = self._evaluate(weights)
        info: dict[str, Any] = {"round": version, "updates": 0, "update_bytes": 0,
                                "model_bytes": len(blob), "delta_bytes": 0,
                                "round_wall_s": 0.0, "mode": self.participation.mode,
                                "devices": [], **metrics, "copy_of": source}
        self.store.add_model(version, blob, sha256_hex(blob), info)
        state.history.append(VersionRecord.from_info(version, at.wall, info))
        self.narrator.version_made(version, info)
        report = VersionReport(version, version, 0, 0.0, metrics)
        state.weights, state.version = weights, version
        return version, [*self.publisher.model(version, weights, state.arch),
                         VersionMade(report, state.snapshot())]

    def _info(self, state: CoreState, result: RoundResult, metrics: dict[str, float],
              model_bytes: int, delta_bytes: int, round_wall_s: float) -> dict[str, Any]:
        """The version's row: the same keys, in the same order, for every kind of round."""
        task = state.task
        assert task is not None
        return {"round": task.round, "updates": result.updates,
                "update_bytes": result.update_bytes, "model_bytes": model_bytes,
                "delta_bytes": delta_bytes, "round_wall_s": round_wall_s,
                "mode": self.participation.mode, "max_train_s": result.max_train_s,
                "devices": result.devices, **result.evaluation, **metrics, **result.extra,
                **self.privacy.commit(task.task_id)}

    def _evaluate(self, weights: Weights) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        if cluster_count(weights):
            return evaluate_clusters(self.evaluate, weights)
        return {k: float(v) for k, v in self.evaluate(weights).items()}
