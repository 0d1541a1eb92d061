"""The core's lifecycle part, sans-IO: each new version's stage, the canary of a
candidate, the rule's decision, and operators' commands (operator.py).

With [rollout] off every version goes to production when it is made, as before stages
existed. With it on, a new version is a candidate under canary evaluation: new rounds
wait (said at INFO) until the rule promotes it or rolls it back. A rollback makes the
next version a copy of production, so training and serving go on from it, and devices,
whose versions only ever grow, need nothing but the usual model chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, Publish
from aggregator.core.events import Instant
from aggregator.lifecycle.canary import CANARY_NOTE, Canary, open_report, report_figures
from aggregator.lifecycle.rule import Verdict, decide
from aggregator.lifecycle.stages import Stage, StageChange
from aggregator.narrator import Narrator, Waiting
from aggregator.store import Store
from edge_client.shared.protocol import Topics
from edge_client.shared.protocol.rollout import (
    MAX_ROLLED_BACK,
    Rollout,
    encode_rollout,
    pick_canaries,
)

log = logging.getLogger("aggregator.service")
PIN_NOTE = "rollout_pin"
MakeCopy = Callable[[int, Instant], tuple[int, list[Action]]]  # new version, like `source`


class Lifecycle:
    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes], narrator: Narrator) -> None:
        self.config, self.rules = config, config.rollout
        self.store, self.topics, self.sign, self.narrator = store, topics, sign, narrator
        self.make_copy: MakeCopy = lambda version, at: (version, [])  # set by the core
        self.candidates: Callable[[], list[str]] = list  # available devices, set by the core
        migrated = store.migrate_stages()
        if migrated:
            log.info("aggregator: %d stored version(s) recorded at stage production "
                     "(made before model stages existed)", migrated)
        self._unstaged()
        note = store.note(CANARY_NOTE)
        self.canary = Canary.from_json(note) if note else None
        if self.canary is not None and store.stage_of(self.canary.candidate) is not Stage.CANARY:
            self.canary = None  # decided just before a crash: the stage says so
        if self.canary is not None:
            log.info("aggregator: resuming the canary of version %d against production %d "
                     "(%d report(s) stored)", self.canary.candidate, self.canary.production,
                     len(store.canary_reports(self.canary.candidate)))

    def _unstaged(self) -> None:
        """A version stored without its stage (a crash between the two commits) is a
        candidate again: it is evaluated, never served unseen. A store whose production
        version was dropped (`fedge aggregator recover`) serves the newest version that
        was served before."""
        if self.store.forget_missing_stages():
            log.warning("aggregator: stages of versions no longer in the store forgotten")
        staged = self.store.stages()
        for record in self.store.model_history():
            if record.version in staged:
                continue
            if not self.rules.enabled:  # every version is served when made: so this one
                self.set(record.version, Stage.PRODUCTION, "rollout off", "[rollout] "
                         "canary_fraction is 0: every version is served when made")
            else:
                self.set(record.version, Stage.CANDIDATE, "rule", "no stage recorded (the "
                         "service stopped right after making it)")
        if self.production() is None:
            served = [v for v, s in self.store.stages().items() if s is Stage.RETIRED] or [0]
            self.set(max(served), Stage.PRODUCTION, "rule", "no production version in the "
                     "store: the newest one served before is served again")

    # ------------------------------------------------------------ what others read
    @property
    def pinned(self) -> int | None:
        return self.store.note(PIN_NOTE)

    def production(self) -> int | None:
        found = [v for v, s in self.store.stages().items() if s is Stage.PRODUCTION]
        return max(found) if found else None

    def holds(self) -> bool:
        """Whether new rounds wait: a candidate is under canary evaluation."""
        return self.canary is not None

    def rollout_message(self) -> list[Action]:
        """The retained Rollout devices follow. With [rollout] off and no stage ever moved
        by a rule or an operator, none: devices serve every version, as before."""
        topic = self.topics.rollout
        production = self.production()
        if production is None or not (self.rules.enabled or self.store.stages_steered()):
            return []
        canary = self.canary
        rolled = [v for v, s in self.store.stages().items() if s is Stage.ROLLED_BACK]
        message = Rollout(production, None if canary is None else canary.candidate,
                          () if canary is None else canary.canaries,
                          tuple(rolled[-MAX_ROLLED_BACK:]))
        return [Publish(topic, self.sign(encode_rollout(message)), retain=True)]

    # ------------------------------------------------------------ stages
    def set(self, version: int, stage: Stage, actor: str, reason: str) -> None:
        """Move one version; leaving production for another, the old production retires."""
        before = self.store.stage_of(version)
        changes = [StageChange(time.time(), version, before, stage, actor, reason)]
        if stage is Stage.PRODUCTION:
            changes += [StageChange(time.time(), v, s, Stage.RETIRED, actor,
                                    f"superseded by version {version}")
                        for v, s in self.store.stages().items()
                        if s is Stage.PRODUCTION and v != version]
        self.store.set_stages(changes)
        log.info("aggregator: version %d is now %s (%s: %s)", version, stage.value, actor,
                 reason)

    def version_made(self, version: int, at: Instant) -> list[Action]:
        """A new version from training: production at once with [rollout] off; else a
        candidate, and its canary starts (unless production is pinned)."""
        if not self.rules.enabled:
            self.set(version, Stage.PRODUCTION, "rollout off", "[rollout] canary_fraction "
                     "is 0: every version is served when made")
            return self.rollout_message()  # devices that once followed one: the new one
        if self.pinned is not None:
            self.set(version, Stage.CANDIDATE, "rule", f"production is pinned at version "
                     f"{self.pinned}: no canary until an operator promotes a version")
            return []
        self.set(version, Stage.CANDIDATE, "rule", "made by training")
        return self.start_canary(version, at)

    def start_canary(self, version: int, at: Instant) -> list[Action]:
        production = self.production()
        assert production is not None
        canaries = pick_canaries(self.candidates(), version, self.rules.canary_fraction)
        self.canary = Canary(version, production, canaries, at.wall)
        self.store.set_note(CANARY_NOTE, self.canary.to_json())
        self.set(version, Stage.CANARY, "rule", f"evaluated by {len(canaries)} canary "
                 f"device(s) against production {production}: {', '.join(canaries) or '-'}")
        return self.rollout_message()

    def end_canary(self, stage: Stage, actor: str, reason: str) -> None:
        canary = self.canary
        assert canary is not None
        self.canary = None
        self.store.set_note(CANARY_NOTE, None)
        self.set(canary.candidate, stage, actor, reason)

    # ------------------------------------------------------------ reports and the rule
    def on_report(self, device: str, payload: bytes) -> None:
        """One canary device's figures; RemoteProtocolError for one to refuse."""
        report = open_report(self.canary, device, payload, self.store, self.config.security)
        if not self.store.add_canary_report(report.candidate, device, report_figures(report)):
            log.debug("aggregator: %s sent its report on version %d again (kept the first)",
                      device, report.candidate)
            return
        log.info("aggregator: canary report from %s on version %d: accuracy %.4f vs "
                 "production %.4f, agreement %s on %d samples", device, report.candidate,
                 report.candidate_accuracy, report.production_accuracy,
                 "unknown" if report.agreement is None else f"{report.agreement:.3f}",
                 report.samples)

    def tick(self, at: Instant) -> list[Action]:
        canary = self.canary
        if canary is None:
            return []
        if not canary.canaries:  # none available when it was made: draw again
            drawn = pick_canaries(self.candidates(), canary.candidate,
                                  self.rules.canary_fraction)
            if drawn:
                self.canary = canary = Canary(canary.candidate, canary.production, drawn,
                                              canary.started_at)
                self.store.set_note(CANARY_NOTE, canary.to_json())
                log.info("aggregator: canary devices for version %d: %s", canary.candidate,
                         ", ".join(drawn))
                return self.rollout_message()
        decision = decide(self.store.canary_reports(canary.candidate), self.rules,
                          at.wall - canary.started_at)
        if decision.verdict is Verdict.WAIT:
            self.narrator.waiting(Waiting.CANARY, lambda: (decision.reason, (
                f"version {canary.candidate} is under canary evaluation: "
                f"{decision.reason}; new rounds wait for the decision")))
            return []
        if decision.verdict is Verdict.PROMOTE:
            log.info("aggregator: promoting version %d: %s", canary.candidate,
                     decision.reason)
            self.end_canary(Stage.PRODUCTION, "rule", decision.reason)
            return self.rollout_message()
        log.info("aggregator: rolling back version %d: %s", canary.candidate,
                 decision.reason)
        self.end_canary(Stage.ROLLED_BACK, "rule", decision.reason)
        return self.copy_to_production(canary.production, at, "rule",
                                       f"rollback of version {canary.candidate}")

    def copy_to_production(self, source: int, at: Instant, actor: str,
                           why: str) -> list[Action]:
        """The next version is a copy of `source`, and production: training and serving
        go on from it."""
        latest, out = self.make_copy(source, at)
        self.set(latest, Stage.PRODUCTION, actor, f"a copy of version {source} ({why})")
        return out + self.rollout_message()
