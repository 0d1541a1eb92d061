"""The aggregator core, sans-IO: events in (aggregator/core/events.py), actions out
(aggregator/core/actions.py). It never touches a socket or reads a clock; the store is
its one port, used synchronously so that an ack follows its commit. The MQTT shell is
aggregator/service.py; tests drive the core directly with a scripted clock.

It owns the loop's decisions: when a round opens (participation), what an incoming
update gets (ingest), when a round ends and how (the round driver), and the version
that makes (versions). Every decision that leaves a round waiting is said at INFO by
the narrator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

from aggregator.anomalies import AnomalyWatch
from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, ClearRetained, Subscribe
from aggregator.core.campaigns import watch_drift
from aggregator.core.events import (
    AdoptModel,
    CanaryMessage,
    Event,
    Instant,
    LinkDown,
    LinkUp,
    RefusedUpload,
    SecAggChunk,
    SetStrategy,
    SetTraining,
    StatusMessage,
    Tick,
    UpdateChunk,
    UpperAsks,
    UpperFinished,
    VerifiedUpdate,
)
from aggregator.core.ingest import UpdateIngest
from aggregator.core.invitations import Invitations
from aggregator.core.models import ModelPublisher, load_or_create, restored_downlink
from aggregator.core.pending import Folded, PendingRecord
from aggregator.core.plain_round import PlainRound, updates_per_version
from aggregator.core.round_sum import round_sum
from aggregator.core.rounds import RoundDriver
from aggregator.core.schedule import STOPPED_NOTE, RoundSchedule
from aggregator.core.secure_driver import SecureRound
from aggregator.core.state import CoreState
from aggregator.core.upper import UpperLink
from aggregator.core.versions import Evaluate, VersionMaker
from aggregator.drift import DriftWatch
from aggregator.ingest import open_flat_update
from aggregator.lifecycle.driver import LifecycleDriver
from aggregator.narrator import Narrator, TwinWatch
from aggregator.participation import Participation, participation_for
from aggregator.presence import Presence
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.secure_round import SecureRounds, forget_secure_round
from aggregator.states import RoundDue
from aggregator.status import BROKER_NOTE, FINISHED_NOTE
from aggregator.status_gate import StatusGate
from aggregator.store import Store
from aggregator.strategy import Strategy
from aggregator.strategy.config import build_strategy
from aggregator.strategy.folding import Streaming, model_size
from aggregator.strategy.memory import check_cohort_fits
from edge_client.shared.protocol import RemoteProtocolError, Topics, Weights

log = logging.getLogger("aggregator.service")


class AggregatorCore:
    def __init__(self, config: AggregatorConfig, store: Store, at: Instant,
                 sign: Callable[[bytes], bytes], initial_weights: Weights | None = None,
                 arch: dict | None = None, evaluate: Evaluate | None = None,
                 strategy: Strategy | None = None) -> None:
        self.config, self.store, self._now = config, store, at
        self.topics = topics = Topics(config.federation)
        self.privacy = ServicePrivacy(config, store)  # no-ops with [privacy] mode off
        self.anomalies = AnomalyWatch(store, config.anomalies)
        named = "" if strategy is not None else config.strategy.name
        strategy = self.privacy.wrap(strategy or build_strategy(config.strategy))
        store.set_note(STOPPED_NOTE, None)
        store.set_note(FINISHED_NOTE, None)
        store.set_note(BROKER_NOTE, {"connected": False, "since": at.wall, "reason": "starting"})
        self.participation = participation_for(config)
        self.narrator = Narrator(store, config.waiting_log_s, clock=lambda: self._now.mono,
                                 wall=lambda: self._now.wall)  # what it does, at INFO
        self.twins = TwinWatch(clock=lambda: self._now.mono)  # two devices with one id
        self.presence = Presence(config.presence, store)  # who may be invited
        self.status_gate = StatusGate(config.security, store.device_key)
        version, weights, arch = load_or_create(config, store, initial_weights, arch or {})
        downlink = restored_downlink(config, store, version, weights)
        self.publisher = ModelPublisher(config, store, topics, sign)
        self.driver = round_driver(config, store, topics, sign, self.participation,
                                   self.narrator)
        check_fits(config, strategy, weights, named)  # a cohort it cannot hold: refused
        self.drift = DriftWatch(config.drift, store)  # retraining campaigns (drift.py)
        rounds = self.drift.resumed_rounds(config.rounds)
        rounds = 0 if config.upper.enabled else rounds  # a site ends with its upper tier
        self.state = CoreState(version, weights, arch, store.model_history(), rounds)
        self.ingest = UpdateIngest(config, store, topics, sign, self.presence, self.privacy,
                                   self.anomalies, self.participation, self.driver)
        self.versions = VersionMaker(store, strategy, evaluate, downlink, self.publisher,
                                     self.participation, self.privacy, self.anomalies,
                                     self.narrator, self.driver)
        # each accepted update is folded into the round's sum as it comes (pending.py)
        self.state.pending.attach(lambda repeated: round_sum(
            config, self.versions.strategy, self.state.weights, repeated), self._stored_pending)
        self._out: list[Action] = []
        self.schedule = RoundSchedule(config, store, topics, self.state, self.narrator,
                                      self.participation, self.presence, self.privacy,
                                      self.driver, self.ingest, self.versions,
                                      self.publisher, Invitations(topics, sign), self._out,
                                      UpperLink(config.upper, store))
        self.lifecycle = LifecycleDriver.for_core(self, sign)  # stages, canaries, rollbacks
        self._resume(at)
        self._out += self.schedule.upper.at_start(self.state)  # a site's aggregate again

    def _resume(self, at: Instant) -> None:
        """Pick up the open task and every stored, not yet aggregated update."""
        state = self.state
        opened = forget_secure_round(self.store, self.store.open_task())
        refused = self.privacy.refuse_resumed(opened[0]) if opened is not None else None
        # refused: admitted under other settings; the next task is checked
        if opened is not None and refused is not None:
            log.warning("aggregator: task %s not resumed: %s", opened[0].task_id, refused)
            self.store.abort_task(opened[0].task_id)
        elif opened is not None and opened[0].model_version == state.version:
            state.task, state.task_opened = opened[0], at.mono
            self.schedule.invitations.resume(opened[0])
            # not watched for no-shows: invitees may have sent updates while we were down
        state.pending.refold(everything=True)  # streamed from the store, one at a time
        for record in state.pending.records:
            self.presence.update_seen(record.device_id, record.task_id)
        if state.pending:
            log.info("aggregator: resumed with %d pending updates", len(state.pending))

    def _stored_pending(self) -> Iterator[Folded]:
        """The pending updates as stored, decoded one at a time: what a round folds
        again after a restart or a strategy switch."""
        state = self.state
        for payload in self.store.iter_pending_payloads():
            update, values = open_flat_update(payload, state.weights)
            yield (PendingRecord.of(update, len(payload)), values,
                   self.participation.staleness_factor(update, state.version))

    # ------------------------------------------------------------ events in, actions out
    def handle(self, event: Event) -> list[Action]:
        """What to do about `event`, in order. If it raises, `drain` still gives what
        was decided before the failure."""
        if isinstance(event, Tick):
            self._now = event.at
            if self.presence.write_due(event.at.mono):
                self.presence.write()  # soft state: no fsync of its own
            self.schedule.tick(event)
        elif isinstance(event, UpdateChunk | VerifiedUpdate | RefusedUpload):
            self._now = event.at
            self._out += self.ingest.on_event(event, self.state)
        elif isinstance(event, StatusMessage):
            self._on_status(event)
        elif isinstance(event, SecAggChunk):
            self._on_secagg(event)
        elif isinstance(event, CanaryMessage):
            self.lifecycle.on_message(event.topic, event.payload)
        elif isinstance(event, LinkUp):
            self._link_up(event.at)
        elif isinstance(event, LinkDown):
            log.warning("aggregator: disconnected from the broker (%s)", event.reason)
            self.state.link_problem = event.reason
            self.store.set_note(BROKER_NOTE, {"connected": False, "since": event.at.wall,
                                              "reason": event.reason})
        elif isinstance(event, AdoptModel | UpperAsks | UpperFinished):  # a site's upper tier
            self._out += self.schedule.upper.on_event(event, self.state, self.schedule)
        elif isinstance(event, SetTraining):
            self.state.paused = not event.running
            log.warning("aggregator: training %s by the operator",
                        "resumed" if event.running else "paused")
        elif isinstance(event, SetStrategy):
            self.versions.strategy = self.strategy_named(event.name)
            if self.state.pending:  # the new strategy folds the round again, from the store
                self.state.pending.refold()
            log.warning("aggregator: strategy %s from the next version on", event.name)
        return self.drain()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Events handled in this block are one group commit (aggregator/ingest_batch.py);
        the caller performs their actions (acks) only after it exits without error."""
        with self.store.group():
            yield
            if self.store.group_durable():
                self.presence.write()  # the fsync is paid anyway

    def round_due(self) -> bool:
        """The open round has its updates: the service ends its batch there, so a buffer
        of K aggregates K, and the update after a round's target is late, as before."""
        task = self.state.task
        return task is not None and not self.state.paused and self.participation.due(
            len(self.state.pending), task, self._now.wall) is RoundDue.AGGREGATE

    def write_soft_state(self) -> None:  # on a clean stop: statuses kept in memory
        self.presence.write()

    def drain(self) -> list[Action]:
        out = list(self._out)
        self._out.clear()  # in place: the schedule appends to the same list
        return out + self.schedule.invitations.answered(out)  # an ack ends an invitation

    def open_task(self, at: Instant) -> list[Action]:
        """Open the next task now, as a tick would once devices are known."""
        self._now = at
        self.schedule.open_task(at)
        return self.drain()

    def strategy_named(self, name: str) -> Strategy:
        """The named strategy with the config's other settings (trim, f, eta, ...);
        ValueError if unknown or if this kind of round cannot use it. Safe to call from
        any thread: it reads only the config and the model's size."""
        strategy = self.privacy.wrap(build_strategy(dataclasses.replace(
            self.config.strategy, name=name)))
        self.driver.check_strategy(name)
        check_fits(self.config, strategy, self.state.weights, name)
        return strategy

    def _link_up(self, at: Instant) -> None:
        c, state = self.config, self.state
        state.connected_at = at.mono
        log.info("aggregator: connected to the broker at %s:%d; federation %r (topics %s/...)",
                 c.host, c.port, c.federation, self.topics.prefix)
        self.store.set_note(BROKER_NOTE, {"connected": True, "since": at.wall, "reason": ""})
        state.done_published = False  # a finished run says so again after a reconnect
        self._out += [Subscribe(self.topics.all_updates), Subscribe(self.topics.all_statuses)]
        self._out += self.lifecycle.on_link_up()
        self._out += self.publisher.model(state.version, state.weights, state.arch,
                                          whole_chain=True)
        self._out += self.schedule.task_again()
        self._out += self.driver.on_link_up()

    def _on_status(self, event: StatusMessage) -> None:
        """Statuses are checked by the StatusGate (signed, in secure mode) and weighed by
        Presence; a refused one is logged, counted and, if retained, cleared."""
        self._now = event.at
        try:
            device = self.topics.device_of(event.topic)
            status = self.status_gate.open(device, event.payload, event.at.wall)
        except (ValueError, RemoteProtocolError) as exc:
            log.warning("aggregator: ignored a status on %s: %s", event.topic, exc)
            self.store.count("statuses_refused")
            if event.retained:
                self._out.append(ClearRetained(event.topic))
            return
        if status is None:  # the one already taken, delivered again
            return
        self.presence.on_status(status, event.at.mono, event.at.wall)
        self.twins.status(status)
        watch_drift(self, status, event.at.wall)

    def _on_secagg(self, event: SecAggChunk) -> None:
        self._now = event.at
        try:
            device = self.topics.device_of(event.topic)
        except ValueError:
            return
        reason = self.driver.on_message(device, event.payload, event.at)
        if reason is not None:  # logged and counted like a rejected update; no ack
            log.warning("aggregator: rejected a secagg message from %s: %s", device, reason)
            self.store.add_rejection(device, "secagg", reason)
            self.anomalies.after_rejection(device)
        elif self.state.task is not None:
            self.presence.update_seen(device, self.state.task.task_id)


def check_fits(config: AggregatorConfig, strategy: Strategy, weights: Weights,
               name: str = "") -> None:
    """ValueError naming [strategy] memory_limit_mb if `strategy` needs every update
    and a version's worth would not fit (aggregator/strategy/memory.py). Secure
    rounds and mean-based strategies keep one sum, whatever the cohort."""
    if config.secagg.enabled or isinstance(strategy, Streaming):
        return
    check_cohort_fits(config.strategy, name or type(strategy).__name__.lower(),
                      updates_per_version(config), model_size(weights))


def round_driver(config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes], participation: Participation,
                 narrator: Narrator) -> RoundDriver:
    """The one place that picks the kind of round (docs/secure-aggregation.md)."""
    if config.secagg.enabled:
        return SecureRound(SecureRounds(config, store, topics, sign), topics, narrator)
    return PlainRound(config, participation, narrator)

