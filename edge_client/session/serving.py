"""Which model the device serves (the app's on_model, e.g. a Predictor), sans-IO.

Until the aggregator publishes a Rollout (docs/lifecycle.md) the device serves every
model it installs, as it always did. From the first Rollout on, it serves only the
production version the latest Rollout names, keeps the models it needs for that (the
served one, the candidate, the newest), and, when it is one of the candidate's canary
devices, asks its shell to evaluate candidate against production on held-out data.
A device that restarts remembers that it follows a rollout (SaveRollout), so a
candidate stored on disk is never served before the Rollout says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_client.eligibility import Decision
from edge_client.session.actions import (
    Action,
    EvaluateCanary,
    Publish,
    SaveRollout,
    ServeModel,
)
from edge_client.session.events import CanaryEvaluated, RolloutReceived
from edge_client.session.held_model import HeldModel
from edge_client.session.status import StatusBoard
from edge_client.shared.protocol import Topics
from edge_client.shared.protocol.rollout import Rollout, encode_report

log = logging.getLogger("edge_client.client")


class ServingGate:
    def __init__(self, device_id: str, topics: Topics, seal: Callable[[bytes], bytes],
                 status: StatusBoard) -> None:
        self.me, self.topics, self.seal = device_id, topics, seal
        self.status = status  # its latest eligibility decision gates canary evaluations
        self.rollout: Rollout | None = None
        self.following: int | None = None  # the production version last named, if any
        self.served: int | None = None
        self._models: dict[int, HeldModel] = {}
        self._latest: int | None = None
        self._evaluated: set[int] = set()
        self._report: tuple[int, Publish] | None = None  # the last report, for resends

    def resumed(self, model: HeldModel | None, following: int | None) -> list[Action]:
        """After a reboot: the stored model, and the production version stored with the
        last Rollout (None: this device never saw one)."""
        self.following = following
        return [] if model is None else self.installed(model)

    def handle(self, event: RolloutReceived | CanaryEvaluated) -> list[Action]:
        if isinstance(event, RolloutReceived):
            return self.on_rollout(event.rollout)
        if event.report is None:
            log.warning("%s: no canary report: %s", self.me, event.reason)
            return []
        r = event.report
        log.info("%s: canary report on version %d: accuracy %.4f vs production %.4f",
                 self.me, r.candidate, r.candidate_accuracy, r.production_accuracy)
        publish = Publish(self.topics.canary(self.me), self.seal(encode_report(r)))
        self._report = (r.candidate, publish)
        return [publish]

    @property
    def eligible(self) -> bool:
        decision = self.status.decision
        return decision is not None and decision.eligible

    def installed(self, model: HeldModel | None) -> list[Action]:
        """The trainer took a new model (the session's downlink holds it)."""
        if model is None:
            return []
        self._models[model.version] = model
        self._latest = model.version
        if self.following is None:
            self._models = {model.version: model}
            self.served = model.version
            return [ServeModel(model.version, model.arch, model.tensors)]
        return self._serve() + self._evaluate()

    def on_rollout(self, rollout: Rollout) -> list[Action]:
        self.rollout = rollout
        out: list[Action] = []
        if rollout.production != self.following:
            self.following = rollout.production
            out.append(SaveRollout(rollout.production))
        if self._report is not None and self._report[0] == rollout.candidate:
            out.append(self._report[1])  # the aggregator restarted: it may have missed it
        return out + self._serve() + self._evaluate()

    def checked(self, before: Decision | None) -> list[Action]:
        """A fresh eligibility decision: a canary evaluation waits for an eligible
        moment, like training."""
        was = before is not None and before.eligible
        return self._evaluate() if self.eligible and not was else []

    def _serve(self) -> list[Action]:
        production = self.following
        model = self._models.get(production) if production is not None else None
        if model is None or production == self.served:
            if production is not None and model is None and production != self.served:
                log.info("%s: production is version %s, which this device does not hold "
                         "yet; serving %s meanwhile", self.me, production, self.served)
            self._prune()
            return []
        log.info("%s: serving version %d (production%s)", self.me, model.version,
                 "" if self.served is None else f"; was {self.served}")
        self.served = model.version
        self._prune()
        return [ServeModel(model.version, model.arch, model.tensors)]

    def _evaluate(self) -> list[Action]:
        r = self.rollout
        if r is None or r.candidate is None or self.me not in r.canaries or not self.eligible:
            return []
        candidate, production = self._models.get(r.candidate), self._models.get(r.production)
        if candidate is None or production is None or r.candidate in self._evaluated:
            return []
        self._evaluated.add(r.candidate)
        log.info("%s: canary for version %d: evaluating it against production %d on "
                 "held-out data", self.me, r.candidate, r.production)
        return [EvaluateCanary(candidate, production)]

    def _prune(self) -> None:
        keep = {self.served, self.following, self._latest}
        if self.rollout is not None:
            keep.add(self.rollout.candidate)
        self._models = {v: m for v, m in self._models.items() if v in keep}
