"""The aggregator service: MQTT in, SQLite for state, global models out.

One thread runs `Aggregator.run`; the MQTT link only queues events for it. An update
is acknowledged only after its SQLite commit returns, so an acked update survives a
crash, and a restart resumes the open round or buffer from the store.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aggregator.anomalies import AnomalyWatch, clipping_of
from aggregator.config import AggregatorConfig
from aggregator.downlink import DownlinkEncoder, on_the_wire, representable, retained_chain
from aggregator.ingest import check_clock, check_sender, open_update, verified_body
from aggregator.limits import service_inbox, upload_assembler
from aggregator.narrator import Narrator, TwinWatch, Waiting
from aggregator.participation import TaskInfo, Verdict, participation_for
from aggregator.presence import Presence
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.rejection_gate import RejectionGate
from aggregator.secure_round import SecureOutcome, SecureRounds, forget_secure_round
from aggregator.status import BROKER_NOTE, FINISHED_NOTE, HEARTBEAT_NOTE, HEARTBEAT_S
from aggregator.status_gate import StatusGate
from aggregator.store import Store
from aggregator.store_check import refuse_if_damaged
from aggregator.strategy import Contribution, Strategy
from aggregator.strategy.config import build_strategy
from aggregator.version_record import VersionRecord
from edge_client.shared.identity import load_or_create_identity
from edge_client.shared.protocol import (
    Ack,
    Model,
    RemoteProtocolError,
    Task,
    Topics,
    Update,
    Weights,
    decode,
    encode,
)
from edge_client.shared.protocol.chunking import chunk_count, sha256_hex
from edge_client.shared.protocol.model_transfer import package_model
from edge_client.shared.protocol.signing import seal
from edge_client.shared.protocol.states import AckStatus
from edge_client.shared.transport import Connected, Disconnected, Inbound, MqttLink

log = logging.getLogger(__name__)
Evaluate = Callable[[Weights], dict[str, float]]
STOPPED_NOTE = "stopped"  # why training ended early, for the dashboard


@dataclass(frozen=True)
class SetTraining:
    """An operator's request, queued onto the service loop like any other event."""

    running: bool


@dataclass(frozen=True)
class SetStrategy:
    name: str


@dataclass
class VersionReport:
    """What the service tells its owner (the demo's progress bar) after each version."""

    version: int
    round: int
    updates: int
    round_wall_s: float
    metrics: dict[str, float] = field(default_factory=dict)


class Aggregator:
    def __init__(self, config: AggregatorConfig, initial_weights: Weights | None = None,
                 arch: dict | None = None, evaluate: Evaluate | None = None,
                 strategy: Strategy | None = None,
                 on_version: Callable[[VersionReport], None] | None = None) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        # Refuse a damaged store before opening it (aggregator/store_check.py): never
        # start over silently, never serve a model that fails its hash.
        refuse_if_damaged(config.db_path, config.downlink.keep_deltas)
        self.store = Store(config.db_path)
        self.store.keep_sealed()
        self.store.keep_rejections(config.limits.rejections_per_device,
                                   config.limits.rejections_total)
        self.privacy = ServicePrivacy(config, self.store)  # no-ops with [privacy] mode off
        self.anomalies = AnomalyWatch(self.store, config.anomalies)
        self.strategy = self.privacy.wrap(strategy or build_strategy(config.strategy))
        self._stopped: str | None = None  # why training ended before `rounds`
        self.store.set_note(STOPPED_NOTE, None)
        self.store.set_note(FINISHED_NOTE, None)
        self.store.set_note(BROKER_NOTE, {"connected": False, "since": time.time(),
                                          "reason": "starting"})
        self.participation = participation_for(config)
        self.evaluate = evaluate
        self.on_version = on_version
        limits = config.limits  # docs/abuse.md
        self.events = service_inbox(config)  # bounded and fair per device
        self.link = MqttLink(f"fedge-{config.federation}-aggregator", config.host,
                             config.port, self.events, keepalive_s=config.keepalive_s,
                             tls=config.broker_auth.tls(),
                             credentials=config.broker_auth.credentials(),
                             max_unconfirmed=limits.unconfirmed_publishes)
        self._assembler = upload_assembler(config)
        self._answers = RejectionGate(limits.answered_rejections_per_device_s,
                                      limits.answered_rejections_s)
        self._stop = threading.Event()
        self.narrator = Narrator(self.store, config.waiting_log_s)  # what it does, at INFO
        self.twins = TwinWatch()  # two devices with one id
        self._link_problem = "connecting"  # why the link is down, for the waiting line
        self._heartbeat_at = 0.0
        self.presence = Presence(config.presence, self.store)  # who may be invited
        self.status_gate = StatusGate(config.security, self.store.device_key)
        self.version, self.global_weights, self.arch = self._load_or_create(
            initial_weights, arch or {})
        self._task: Task | None = None
        self._task_opened = 0.0
        self._connected_at = 0.0
        self._done_published = False
        self._paused = False
        self._update_bytes: dict[str, int] = {}  # message size of each pending update
        self.downlink = self._restore_downlink(DownlinkEncoder(config.downlink,
                                                               seed=config.seed))
        self._pace_rng = random.Random(config.seed)
        self.identity = (load_or_create_identity(config.security.key_file)
                         if config.security.enabled else None)
        self.secure = (SecureRounds(config, self.store, self.topics, self._signed)
                       if config.secagg.enabled else None)  # docs/secure-aggregation.md
        self._rejected: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pending: list[Update] = []
        self.history: list[VersionRecord] = self.store.model_history()
        self._resume()

    # ------------------------------------------------------------ start-up
    def _load_or_create(self, initial: Weights | None,
                        arch: dict) -> tuple[int, Weights, dict]:
        stored = self.store.latest_model()
        if stored is not None:
            if sha256_hex(stored.blob) != stored.sha256:  # store_check saw it; a 2nd line
                raise ValueError(f"the store {self.config.db_path}: model version "
                                 f"{stored.version} fails its SHA-256; run `fedge aggregator "
                                 "check` and `recover`")
            model = decode(stored.blob, expect=Model)
            assert isinstance(model, Model)
            log.info("aggregator: resuming at model version %d", model.version)
            weights = {k: v.astype(np.float32) for k, v in model.tensors.items()}
            return model.version, weights, model.arch
        if initial is None:
            raise ValueError("the store holds no model: pass initial weights")
        weights = representable({k: np.asarray(v, dtype=np.float32)
                                 for k, v in initial.items()}, self.config.downlink.full)
        blob = encode(Model(version=0, tensors=self._wire(weights), arch=arch))
        self.store.add_model(0, blob, sha256_hex(blob),
                             {"round": 0, "updates": 0, "model_bytes": len(blob)})
        return 0, weights, arch

    def _restore_downlink(self, encoder: DownlinkEncoder) -> DownlinkEncoder:
        """Continue the error feedback stored with the current version, so a restart makes
        the same models as an uninterrupted run."""
        state = self.store.downlink_residual(self.version)
        if state is None:
            if self.version > 0 and self.config.downlink.delta:
                log.info("aggregator: no downlink residual stored with version %d (a store "
                         "from an older fedge): the error feedback starts from zero",
                         self.version)
            return encoder
        size = sum(w.size for w in self.global_weights.values())
        try:
            encoder.restore(state, size)
        except ValueError as exc:
            raise ValueError(
                f"the store {self.config.db_path}: the downlink residual of version "
                f"{self.version} is unusable ({exc}); run `fedge aggregator check`") from None
        return encoder

    def _resume(self) -> None:
        """Pick up the open task and every stored, not yet aggregated update."""
        opened = forget_secure_round(self.store, self.store.open_task())
        refused = self.privacy.refuse_resumed(opened[0]) if opened is not None else None
        # refused: admitted under other settings; the next task is checked
        if opened is not None and refused is not None:
            log.warning("aggregator: task %s not resumed: %s", opened[0].task_id, refused)
            self.store.abort_task(opened[0].task_id)
        elif opened is not None and opened[0].model_version == self.version:
            self._task, self._task_opened = opened[0], time.monotonic()
            # not watched for no-shows: invitees may have sent updates while we were down
        for payload in self.store.pending_payloads():
            update = open_update(payload, self.global_weights)
            self._pending.append(update)
            self._update_bytes[update.nonce] = len(payload)
            self.presence.update_seen(update.device_id, update.task_id)
        if self._pending:
            log.info("aggregator: resumed with %d pending updates", len(self._pending))

    # ------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None, exit_when_done: bool = True) -> None:
        """Serve until `stop` is set, or until `rounds` versions exist with `exit_when_done`.

        A gateway keeps serving after its last round (`fedge aggregator serve` does, unless
        --exit-when-done): late updates still get their acks, statuses still come in, and
        the dashboard keeps showing who is online.
        """
        if stop is not None:
            self._stop = stop
        self.link.start()
        try:
            while not self._stop.is_set() and not (exit_when_done and self._done_published):
                try:
                    event = self.events.get(timeout=0.05)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle_one(event)
                self._tick(time.time())
        finally:
            self.link.stop()
            self.store.close()

    def _handle_one(self, event: object) -> None:
        """The boundary of one inbound event: whatever one bad message raises is logged
        and counted ("bad_messages"), and the loop goes on, so no single message (a
        retained one at every start included) can stop the service."""
        topic = event.topic if isinstance(event, Inbound) else type(event).__name__
        try:
            self._handle(event)
        except RemoteProtocolError as exc:
            log.warning("aggregator: dropped a bad message on %s: %s", topic, exc.reason)
        except Exception as exc:  # our bug, not the sender's: keep serving the others
            log.error("aggregator: handling a message on %s failed: %s", topic, exc,
                      exc_info=True)
        else:
            return
        try:
            self.store.count("bad_messages")
        except Exception as exc:  # logged, not raised: the next message may still be served
            log.error("aggregator: cannot count a bad message: %s", exc)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ admin actions
    # The dashboard's admin API calls these from its own threads: they only queue.
    def set_training(self, running: bool) -> None:
        """Pause (no new tasks, no new versions; updates are still stored) or resume."""
        self.events.put(SetTraining(bool(running)))

    def set_strategy(self, name: str) -> None:
        """Aggregate with `name` from the next version on; ValueError if unknown."""
        self._strategy_named(name)  # refuses an unknown name here, in the caller's thread
        if self.secure is not None:
            self.secure.check_strategy(name)
        self.events.put(SetStrategy(name))

    def _strategy_named(self, name: str) -> Strategy:
        """The named strategy with the config's other settings (trim, f, eta, ...)."""
        return self.privacy.wrap(build_strategy(dataclasses.replace(self.config.strategy,
                                                                    name=name)))

    @property
    def available(self) -> set[str]:
        """Devices online and eligible by their last status (aggregator/presence.py)."""
        return self.presence.available

    @available.setter
    def available(self, devices: set[str]) -> None:
        self.presence.available = set(devices)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pending_count(self) -> int:
        """Stored updates waiting for the next aggregation."""
        return len(self._pending)

    @property
    def finished(self) -> bool:
        reached = self.config.rounds > 0 and self.version >= self.config.rounds
        return reached or self._stopped is not None

    def _handle(self, event: object) -> None:
        if isinstance(event, Connected):
            self._connected_at = time.monotonic()
            log.info("aggregator: connected to the broker at %s:%d; federation %r (topics "
                     "%s/...)", self.config.host, self.config.port, self.config.federation,
                     self.topics.prefix)
            self.store.set_note(BROKER_NOTE, {"connected": True, "since": time.time(),
                                              "reason": ""})
            self._done_published = False  # a finished run says so again after a reconnect
            self.link.subscribe(self.topics.all_updates)
            self.link.subscribe(self.topics.all_statuses)
            self._publish_model(whole_chain=True)
            if self._task is not None:
                self._publish_task(self._task)
            if self.secure is not None:
                self.link.subscribe(self.topics.all_secagg)
                self._publish_all(self.secure.resend())
        elif isinstance(event, Disconnected):
            log.warning("aggregator: disconnected from the broker (%s)", event.reason)
            self._link_problem = event.reason
            self.store.set_note(BROKER_NOTE, {"connected": False, "since": time.time(),
                                              "reason": event.reason})
        elif isinstance(event, SetTraining):
            self._paused = not event.running
            log.warning("aggregator: training %s by the operator",
                        "resumed" if event.running else "paused")
        elif isinstance(event, SetStrategy):
            self.strategy = self._strategy_named(event.name)
            log.warning("aggregator: strategy %s from the next version on", event.name)
        elif isinstance(event, Inbound) and event.payload:
            if event.topic.startswith(self.topics.prefix + "/update/"):
                self._on_update_chunk(event.topic, event.payload, event.retained)
            elif event.topic.startswith(self.topics.prefix + "/status/"):
                self._on_status(event.topic, event.payload, event.retained)
            elif self.secure is not None and event.topic.startswith(
                    self.topics.prefix + "/secagg/"):
                self._on_secagg(event.topic, event.payload)

    def _tick(self, now: float) -> None:
        if now - self._heartbeat_at >= HEARTBEAT_S:  # /api/health: the loop runs
            self._heartbeat_at = now
            self.store.set_note(HEARTBEAT_NOTE, now)
        for device, transfer in self._assembler.expire(time.monotonic()):
            log.warning("aggregator: dropped a stalled upload %s from %s", transfer[:8], device)
        if not self.link.connected:
            self.narrator.waiting(Waiting.BROKER, lambda: (self._link_problem, (
                f"not connected to {self.config.host}:{self.config.port} "
                f"({self._link_problem})")))
            return
        if self._paused:
            self.narrator.waiting(Waiting.PAUSED, lambda: (None, "training is paused; resume "
                                  "it from the dashboard or POST /api/admin/training"))
            return
        if self.finished:
            if not self._done_published:  # also when started with every version made
                self._publish_done()
            return
        if self._task is None:
            settled = time.monotonic() - self._connected_at >= self.config.presence_settle_s
            if settled:  # retained statuses of online devices have come in
                self._open_task(now)
            return
        if self.secure is not None:
            self._tick_secure(now)
            return
        decision = self.participation.due(len(self._pending), self._task, now)
        if decision == "wait":
            task, pending = self._task, self._pending
            self.narrator.waiting(Waiting.UPDATES, lambda: self.narrator.for_updates(
                task, [u.device_id for u in pending], self._updates_wanted()))
        else:
            self._round_over(self._task)
        if decision == "aggregate":
            self._aggregate()
            self._open_task(now)
        elif decision == "abort":
            self.participation.round_aborted()
            log.warning("aggregator: round %d reached its deadline with %d of %d updates; "
                        "starting it again with a %.3g s deadline", self._task.round,
                        len(self._pending), self.config.sync.target_updates,
                        self.participation.timeout_s)
            self.store.abort_task(self._task.task_id)
            self._pending.clear()
            self._task = None

    # ------------------------------------------------------------ tasks and models
    def _open_task(self, now: float) -> None:
        if self.finished:
            return
        candidates = self._candidates()
        task = self.participation.plan(self.version + 1, self.version, candidates, now,
                                       proven=self._proven_for_plan())
        if task is None:
            self.narrator.waiting(Waiting.DEVICES, lambda: self.narrator.for_devices(
                self.version + 1, len(candidates), self._updates_wanted()))
            return
        task, stop = self.privacy.admit(task, len(candidates))
        if stop is not None:
            log.warning("aggregator: training stops at version %d: %s", self.version, stop)
            self._stopped = stop
            self.store.set_note(STOPPED_NOTE, stop)
            return
        if self.secure is not None:
            task = self.secure.open(task, sum(w.size for w in self.global_weights.values()),
                                    now)
        message = encode(task)
        self.store.add_task(task, message)
        self._task, self._task_opened = task, time.monotonic()
        self.presence.round_opened(task)
        self._publish_task(task)
        self.narrator.round_opened(task, len(candidates))

    def _proven_for_plan(self) -> set[str] | None:
        """Devices with a track record, for topping up invitations; None (no top-up) when
        DP accounting or secure aggregation's sizes assume uniformly drawn devices."""
        if self.config.privacy.enabled or self.secure is not None:
            return None
        return self.presence.proven

    def _round_over(self, task: Task) -> None:
        """Count the round's no-shows; clear the retained statuses of benched newcomers
        (never seen with an update), so they do not come back at every start."""
        for device in self.presence.round_ended(task.task_id, time.monotonic()):
            self._clear_retained(self.topics.status(device))

    def _clear_retained(self, topic: str) -> None:
        """Publish an empty retained message: the broker forgets what it held there."""
        if self.link.publish(topic, b"", retain=True):
            log.info("aggregator: cleared the retained message on %s", topic)

    def _tick_secure(self, now: float) -> None:
        """Relay the next phase of the secure round, or end it: a version, or a restart."""
        assert self.secure is not None and self._task is not None
        step = self.secure.tick(now)
        self._publish_all(step.outgoing)
        if step.aborted is not None or step.done:
            self._round_over(self._task)
        if step.aborted is not None:
            self.participation.round_aborted()
            log.warning("aggregator: secure round %d (%s) aborted: %s; starting it again",
                        self._task.round, self._task.task_id, step.aborted)
            self.store.abort_task(self._task.task_id)
            self._task = None
        elif step.done:
            self._aggregate(self.secure.outcome(self.global_weights))
            self._open_task(now)

    def _on_secagg(self, topic: str, payload: bytes) -> None:
        assert self.secure is not None
        try:
            device = self.topics.device_of(topic)
        except ValueError:
            return
        reason = self.secure.receive(device, payload, time.time())
        if reason is not None:  # logged and counted like a rejected update; no ack
            log.warning("aggregator: rejected a secagg message from %s: %s", device, reason)
            self.store.add_rejection(device, "secagg", reason)
            self.anomalies.after_rejection(device)
        elif self._task is not None:
            self.presence.update_seen(device, self._task.task_id)

    def _updates_wanted(self) -> int:
        """Updates that make a version: the sync target, or the async buffer."""
        if self.config.mode == "sync":
            return self.config.sync.target_updates
        return self.config.async_.buffer_size

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.link.publish(topic, payload)

    def _wire(self, weights: Weights) -> Weights:
        return on_the_wire(weights, self.config.downlink.full)

    def _candidates(self) -> list[str]:
        """Devices that may be invited: available and not benched, and (with security)
        still enrolled, so a revocation made from another process counts from the next
        task on."""
        candidates = self.presence.candidates()
        if not self.config.security.enabled:
            return candidates
        return [d for d in candidates if self.store.device_key(d) is not None]

    def _publish_task(self, task: Task) -> None:
        self.link.publish(self.topics.task, self._signed(encode(task)), retain=True)

    def _signed(self, message: bytes) -> bytes:
        """What devices that pin our key accept: the message sealed with our signature."""
        return message if self.identity is None else seal(message, self.identity)

    def _publish_model(self, whole_chain: bool = False) -> None:
        """Retained chunks (full, and the deltas) first, then the manifest.

        After a new version only its own delta is new on the broker; on (re)connect
        (`whole_chain`) every retained delta goes out again, in case the broker lost them.
        """
        model = Model(version=self.version, tensors=self._wire(self.global_weights),
                      arch=self.arch)
        manifest, chunks = package_model(model, self.config.chunk_size)
        for i, chunk in enumerate(chunks):
            self.link.publish(self.topics.model_chunk(self.version, i), chunk, retain=True)
        downlink = self.config.downlink
        chain = (retained_chain(self.store, self.version, downlink, self.config.chunk_size)
                 if self.version > 0 else [])
        for info, delta_chunks in chain if whole_chain else chain[-1:]:
            for i, chunk in enumerate(delta_chunks):
                self.link.publish(self.topics.model_delta_chunk(info.version, i), chunk,
                                  retain=True)
        if chain:
            listed = tuple(info for info, _ in chain) if downlink.keep_deltas >= 2 else None
            manifest = dataclasses.replace(manifest, delta=chain[-1][0], chain=listed)
        self.link.publish(self.topics.model, self._signed(encode(manifest)), retain=True)
        self._clear_model_chunks(self.version - 2)
        self._clear_delta_chunks(self.version - max(2, downlink.keep_deltas))

    def _clear_model_chunks(self, version: int) -> None:
        """Old versions' retained chunks would otherwise stay on the broker forever."""
        size = self.store.model_size(version)
        for i in range(chunk_count(size, self.config.chunk_size) if size else 0):
            self.link.publish(self.topics.model_chunk(version, i), b"", retain=True)

    def _clear_delta_chunks(self, version: int) -> None:
        delta = self.store.model_delta(version)
        for i in range(chunk_count(len(delta), self.config.chunk_size) if delta else 0):
            self.link.publish(self.topics.model_delta_chunk(version, i), b"", retain=True)

    def _aggregate(self, secure: SecureOutcome | None = None) -> None:
        assert self._task is not None
        contributions = secure.contributions if secure is not None else [
            # in device order, so float sums do not depend on arrival
            Contribution(u.device_id, u.tensors, u.num_samples,
                         self.participation.staleness_factor(u, self.version))
            for u in sorted(self._pending, key=lambda u: (u.device_id, u.nonce))
        ]
        try:
            proposed = self.strategy.aggregate(self.global_weights, contributions,
                                               self.participation.server_lr)
        except ValueError as exc:  # e.g. every update non-finite, or an overflow
            log.error("aggregator: version %d not made: %s; starting the round again",
                      self.version + 1, exc)
            if self._task.mode == "sync":
                self.store.abort_task(self._task.task_id)
            if secure is not None and self.secure is not None:
                self.secure.not_used(self._task.task_id, f"version not made: {exc}")
            self._pending, self._task = [], None
            return
        version = self.version + 1
        new_weights, delta = self.downlink.step(self.global_weights, proposed, version)
        round_wall_s = time.monotonic() - self._task_opened
        metrics = self._evaluate(new_weights)
        clipping = clipping_of(self.strategy, contributions)
        blob = encode(Model(version=version, tensors=self._wire(new_weights), arch=self.arch))
        info = {"round": self._task.round, "updates": len(self._pending),
                "update_bytes": sum(self._update_bytes.pop(u.nonce, 0) for u in self._pending),
                "model_bytes": len(blob), "delta_bytes": len(delta) if delta else 0,
                "round_wall_s": round_wall_s, "mode": self.participation.mode,
                "max_train_s": max((u.metrics.get("train_s", 0.0) for u in self._pending),
                                   default=0.0),
                "devices": sorted({u.device_id for u in self._pending}),
                **_device_evaluation(self._pending), **metrics,
                **(secure.info if secure is not None else {}),
                **self.privacy.commit(self._task.task_id)}
        close = self._task.task_id if self._task.mode == "sync" else None
        self.store.add_model(version, blob, sha256_hex(blob), info, used=self._pending,
                             close_task=close, delta=delta, residual=self.downlink.state())
        self.global_weights = new_weights
        self.participation.version_made()
        self.history.append(VersionRecord.from_info(version, time.time(), info))
        self.anomalies.after_version(version, info["devices"], clipping)
        self.narrator.version_made(version, info)
        report = VersionReport(version, self._task.round, info["updates"], round_wall_s,
                               metrics)
        self._pending = []
        self._task = None
        # The number last: other threads wait on `version`, then read history and weights.
        self.version = version
        self._publish_model()
        if self.on_version is not None:
            self.on_version(report)

    def _evaluate(self, weights: Weights) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        return {k: float(v) for k, v in self.evaluate(weights).items()}

    def _publish_done(self) -> None:
        """A retained task that tells every device, now or later, that training is over."""
        done = Task(task_id=f"done-v{self.version}", mode=self.config.mode,
                    round=self.version, model_version=self.version, train=self.config.train,
                    invited=(), chunk_size=self.config.chunk_size, done=True)
        self.link.publish(self.topics.task, self._signed(encode(done)), retain=True)
        if not self.store.note(FINISHED_NOTE):
            why = self._stopped or f"{self.version} of {self.config.rounds} versions made"
            log.info("aggregator: training finished at version %d (%s); devices are told "
                     "to stop", self.version, why)
        self._done_published = True
        self.store.set_note(FINISHED_NOTE, True)  # `fedge status`: every round is done

    # ------------------------------------------------------------ ingest
    def _on_status(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Statuses are checked by the StatusGate (signed, in secure mode) and weighed by
        Presence; a refused one is logged, counted and, if retained, cleared."""
        try:
            device = self.topics.device_of(topic)
            status = self.status_gate.open(device, payload, time.time())
        except (ValueError, RemoteProtocolError) as exc:
            log.warning("aggregator: ignored a status on %s: %s", topic, exc)
            self.store.count("statuses_refused")
            if retained:
                self._clear_retained(topic)
            return
        self.presence.on_status(status, time.monotonic())
        self.twins.status(status)

    def _on_update_chunk(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if retained:  # devices never retain updates: whatever this is, read it only once
            self._clear_retained(topic)
        try:
            device = self.topics.device_of(topic)
        except ValueError:
            return  # cannot even answer: the topic has no valid device id
        try:
            done = self._assembler.add(device, payload, time.monotonic())
        except RemoteProtocolError as exc:
            if not self._already_rejected(device, exc.transfer):
                self._reject(device, exc.transfer or "", "", exc.reason)
            return
        if done is None:
            return
        transfer, message = done
        try:
            security = self.config.security
            message = verified_body(message, device, self.store.device_key(device),
                                    required=security.enabled)
            self.presence.sent_something(device)  # even if refused below: not a no-show
            update = self._validate(device, transfer, message)
            if security.enabled:
                check_clock(update, time.time(), security.max_clock_skew_s)
        except RemoteProtocolError as exc:
            self._reject(device, transfer, "", exc.reason)
            return
        self._store_and_ack(update, message)

    def _already_rejected(self, device: str, transfer: str | None) -> bool:
        """Answer a bad transfer once, not once per chunk; remembers the last 1000."""
        if transfer is None:
            return False
        key = (device, transfer)
        if key in self._rejected:
            return True
        self._rejected[key] = None
        if len(self._rejected) > 1000:
            self._rejected.popitem(last=False)
        return False

    def _validate(self, device: str, transfer: str, message: bytes) -> Update:
        if self.secure is not None:  # never store an unmasked update, not even once
            raise RemoteProtocolError("this federation uses secure aggregation: plain "
                                      "updates are refused (the device must follow Task.secagg)")
        update = open_update(message, self.global_weights)
        check_sender(update, device, transfer)
        self.privacy.check_update(update)
        return update

    def _store_and_ack(self, update: Update, message: bytes) -> None:
        if self.store.has_update(update.device_id, update.task_id):
            # A resend whose first ack was lost, a replay, or a second update for one task:
            # counted once, never stored again.
            self.store.count("duplicates")
            self._ack(update, Verdict(AckStatus.DUPLICATE, reason="already stored for this task"))
            return
        stored = self.store.task_state(update.task_id)
        if stored is None:
            self._reject(update.device_id, update.nonce, update.task_id, "unknown task")
            return
        verdict = self.participation.judge(update, TaskInfo(*stored), self._task,
                                           self.version)
        if verdict.ack == "rejected":
            self._reject(update.device_id, update.nonce, update.task_id, verdict.reason)
            return
        if not self.store.add_update(update, message, verdict.state):
            self._ack(update, Verdict(AckStatus.DUPLICATE, reason="already stored for this task"))
            return
        self.presence.update_seen(update.device_id, update.task_id)
        if verdict.state == "pending":
            self._pending.append(update)
            self._update_bytes[update.nonce] = len(message)
        self._ack(update, verdict)

    def _ack(self, update: Update, verdict: Verdict) -> None:
        ack = Ack(status=verdict.ack, task_id=update.task_id, nonce=update.nonce,
                  reason=verdict.reason, next_checkin_s=self._next_checkin())
        self.link.publish(self.topics.ack(update.device_id), self._signed(encode(ack)))

    def _next_checkin(self) -> float:
        """Pace steering: when this device should look again, jittered so that a fleet
        does not come back all at once."""
        jitter = self.config.checkin_jitter
        return self.config.checkin_interval_s * self._pace_rng.uniform(1 - jitter, 1 + jitter)

    def _reject(self, device: str, nonce: str, task_id: str, reason: str) -> None:
        if not self._answers.allow(device, time.monotonic()):
            return  # a flood: counted, and summed up in the log (aggregator/rejection_gate.py)
        log.warning("aggregator: rejected an update from %s: %s", device, reason)
        self.store.add_rejection(device, nonce, reason)
        self.anomalies.after_rejection(device)
        ack = Ack(status=AckStatus.REJECTED, task_id=task_id, nonce=nonce, reason=reason)
        self.link.publish(self.topics.ack(device), self._signed(encode(ack)))


def _device_evaluation(updates: list[Update]) -> dict[str, float]:
    """The previous model on the devices' own data, sample-weighted: quality measured
    where the data is. Devices that sent no such metric are left out."""
    rows = [(u.num_samples, u.metrics["local_accuracy"], u.metrics.get("local_loss"))
            for u in updates if np.isfinite(u.metrics.get("local_accuracy", np.nan))]
    if not rows:
        return {}
    samples = sum(n for n, _, _ in rows)
    out = {"device_accuracy": sum(n * a for n, a, _ in rows) / samples}
    losses = [(n, loss) for n, _, loss in rows if loss is not None and np.isfinite(loss)]
    if losses:
        out["device_loss"] = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
    return out
