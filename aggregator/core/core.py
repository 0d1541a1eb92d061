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

import dataclasses
import logging
from collections.abc import Callable

from aggregator.anomalies import AnomalyWatch
from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, ClearRetained, Subscribe
from aggregator.core.events import (
    Event,
    Instant,
    LinkDown,
    LinkUp,
    SecAggChunk,
    SetStrategy,
    SetTraining,
    StatusMessage,
    Tick,
    UpdateChunk,
)
from aggregator.core.ingest import UpdateIngest
from aggregator.core.models import ModelPublisher, load_or_create, restored_downlink
from aggregator.core.plain_round import PlainRound, updates_wanted
from aggregator.core.rounds import Decision, RoundDriver
from aggregator.core.secure_driver import SecureRound
from aggregator.core.state import CoreState
from aggregator.core.versions import Evaluate, VersionMaker
from aggregator.ingest import open_update
from aggregator.narrator import Narrator, TwinWatch, Waiting
from aggregator.participation import Participation, participation_for
from aggregator.presence import Presence
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.secure_round import SecureRounds, forget_secure_round
from aggregator.status import BROKER_NOTE, FINISHED_NOTE, HEARTBEAT_NOTE, HEARTBEAT_S
from aggregator.status_gate import StatusGate
from aggregator.store import Store
from aggregator.strategy import Strategy
from aggregator.strategy.config import build_strategy
from edge_client.shared.protocol import RemoteProtocolError, Task, Topics, Weights, encode

log = logging.getLogger("aggregator.service")
STOPPED_NOTE = "stopped"  # why training ended early, for the dashboard


class AggregatorCore:
    def __init__(self, config: AggregatorConfig, store: Store, at: Instant,
                 sign: Callable[[bytes], bytes], initial_weights: Weights | None = None,
                 arch: dict | None = None, evaluate: Evaluate | None = None,
                 strategy: Strategy | None = None) -> None:
        self.config, self.store, self._now = config, store, at
        self.topics = topics = Topics(config.federation)
        self.privacy = ServicePrivacy(config, store)  # no-ops with [privacy] mode off
        self.anomalies = AnomalyWatch(store, config.anomalies)
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
        self.state = CoreState(version, weights, arch, store.model_history(), config.rounds)
        self.ingest = UpdateIngest(config, store, topics, sign, self.presence, self.privacy,
                                   self.anomalies, self.participation, self.driver)
        self.versions = VersionMaker(store, strategy, evaluate, downlink, self.publisher,
                                     self.participation, self.privacy, self.anomalies,
                                     self.narrator, self.driver)
        self._out: list[Action] = []
        self._resume(at)

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
            # not watched for no-shows: invitees may have sent updates while we were down
        for payload in self.store.pending_payloads():
            update = open_update(payload, state.weights)
            state.pending.add(update, len(payload))
            self.presence.update_seen(update.device_id, update.task_id)
        if state.pending:
            log.info("aggregator: resumed with %d pending updates", len(state.pending))

    # ------------------------------------------------------------ events in, actions out
    def handle(self, event: Event) -> list[Action]:
        """What to do about `event`, in order. If it raises, `drain` still gives what
        was decided before the failure."""
        if isinstance(event, Tick):
            self._tick(event)
        elif isinstance(event, UpdateChunk):
            self._now = event.at
            if event.retained:  # devices never retain updates: read it only once
                self._out.append(ClearRetained(event.topic))
            self._out += self.ingest.on_chunk(event, self.state)
        elif isinstance(event, StatusMessage):
            self._on_status(event)
        elif isinstance(event, SecAggChunk):
            self._on_secagg(event)
        elif isinstance(event, LinkUp):
            self._link_up(event.at)
        elif isinstance(event, LinkDown):
            log.warning("aggregator: disconnected from the broker (%s)", event.reason)
            self.state.link_problem = event.reason
            self.store.set_note(BROKER_NOTE, {"connected": False, "since": event.at.wall,
                                              "reason": event.reason})
        elif isinstance(event, SetTraining):
            self.state.paused = not event.running
            log.warning("aggregator: training %s by the operator",
                        "resumed" if event.running else "paused")
        elif isinstance(event, SetStrategy):
            self.versions.strategy = self.strategy_named(event.name)
            log.warning("aggregator: strategy %s from the next version on", event.name)
        return self.drain()

    def drain(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def strategy_named(self, name: str) -> Strategy:
        """The named strategy with the config's other settings (trim, f, eta, ...);
        ValueError if unknown or if this kind of round cannot use it. Safe to call from
        any thread: it reads only the config."""
        strategy = build_strategy(dataclasses.replace(self.config.strategy, name=name))
        self.driver.check_strategy(name)
        return self.privacy.wrap(strategy)

    def _link_up(self, at: Instant) -> None:
        c, state = self.config, self.state
        state.connected_at = at.mono
        log.info("aggregator: connected to the broker at %s:%d; federation %r (topics %s/...)",
                 c.host, c.port, c.federation, self.topics.prefix)
        self.store.set_note(BROKER_NOTE, {"connected": True, "since": at.wall, "reason": ""})
        state.done_published = False  # a finished run says so again after a reconnect
        self._out += [Subscribe(self.topics.all_updates), Subscribe(self.topics.all_statuses)]
        self._out += self.publisher.model(state.version, state.weights, state.arch,
                                          whole_chain=True)
        if state.task is not None:
            self._out.append(self.publisher.task(state.task))
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
        self.presence.on_status(status, event.at.mono)
        self.twins.status(status)

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

    # ------------------------------------------------------------ time
    def _tick(self, event: Tick) -> None:
        at, state = event.at, self.state
        self._now = at
        if at.wall - state.heartbeat_at >= HEARTBEAT_S:  # /api/health: the loop runs
            state.heartbeat_at = at.wall
            self.store.set_note(HEARTBEAT_NOTE, at.wall)
        self.ingest.expire(at)
        if not event.connected:
            self.narrator.waiting(Waiting.BROKER, lambda: (state.link_problem, (
                f"not connected to {self.config.host}:{self.config.port} "
                f"({state.link_problem})")))
        elif state.paused:
            self.narrator.waiting(Waiting.PAUSED, lambda: (None, "training is paused; resume "
                                  "it from the dashboard or POST /api/admin/training"))
        elif state.finished:
            if not state.done_published:  # also when started with every version made
                self._publish_done()
        elif state.task is None:
            if at.mono - state.connected_at >= self.config.presence_settle_s:
                self.open_task(at)  # retained statuses of online devices have come in
        else:
            self._step_round(state.task, at)

    def _step_round(self, task: Task, at: Instant) -> None:
        """Ask the round's driver; end the round with a version or start it again."""
        state = self.state
        step = self.driver.tick(task, state.pending, at)
        self._out += step.outgoing
        if step.decision is Decision.WAIT:
            return
        self._round_over(task.task_id, at)
        if step.decision is Decision.AGGREGATE:
            self._out += self.versions.make(state, at)
            self.open_task(at)
            return
        self.participation.round_aborted()
        log.warning("aggregator: %s", self.driver.abort_line(task, state.pending))
        self.store.abort_task(task.task_id)
        state.pending.clear()
        state.task = None

    def open_task(self, at: Instant) -> None:
        """Plan the next round or async task and publish it, or say why not yet."""
        state = self.state
        if state.finished:
            return
        candidates = self._candidates()
        proven = (self.presence.proven if self.driver.proven_matters()
                  and not self.config.privacy.enabled else None)
        # no top-up when DP accounting or secure sizes assume uniformly drawn devices
        task = self.participation.plan(state.version + 1, state.version, candidates, at.wall,
                                       proven=proven)
        if task is None:
            self.narrator.waiting(Waiting.DEVICES, lambda: self.narrator.for_devices(
                state.version + 1, len(candidates), updates_wanted(self.config)))
            return
        task, stop = self.privacy.admit(task, len(candidates))
        if stop is not None:
            log.warning("aggregator: training stops at version %d: %s", state.version, stop)
            state.stopped = stop
            self.store.set_note(STOPPED_NOTE, stop)
            return
        task = self.driver.open(task, sum(w.size for w in state.weights.values()), at)
        self.store.add_task(task, encode(task))
        state.task, state.task_opened = task, at.mono
        self.presence.round_opened(task)
        self._out.append(self.publisher.task(task))
        self.narrator.round_opened(task, len(candidates))

    def _candidates(self) -> list[str]:
        """Devices that may be invited: available and not benched, and (with security)
        still enrolled, so a revocation made from another process counts from the next
        task on."""
        candidates = self.presence.candidates()
        if not self.config.security.enabled:
            return candidates
        return [d for d in candidates if self.store.device_key(d) is not None]

    def _round_over(self, task_id: str, at: Instant) -> None:
        """Count the round's no-shows; clear the retained statuses of benched newcomers
        (never seen with an update), so they do not come back at every start."""
        for device in self.presence.round_ended(task_id, at.mono):
            self._out.append(ClearRetained(self.topics.status(device)))

    def _publish_done(self) -> None:
        state = self.state
        self._out.append(self.publisher.done(state.version))
        if not self.store.note(FINISHED_NOTE):
            why = state.stopped or f"{state.version} of {self.config.rounds} versions made"
            log.info("aggregator: training finished at version %d (%s); devices are told "
                     "to stop", state.version, why)
        state.done_published = True
        self.store.set_note(FINISHED_NOTE, True)  # `fedge status`: every round is done


def round_driver(config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes], participation: Participation,
                 narrator: Narrator) -> RoundDriver:
    """The one place that picks the kind of round (docs/secure-aggregation.md)."""
    if config.secagg.enabled:
        return SecureRound(SecureRounds(config, store, topics, sign), topics)
    return PlainRound(config, participation, narrator)
