"""The device loop: follow the task and the global model, train, send, wait for the ack.

Everything runs on the caller's thread. The MQTT link only queues events; this loop
takes them one at a time, so the state below needs no locks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_client.device_state import DeviceState
from edge_client.eligibility import Decision, EligibilityConfig, EligibilityPolicy
from edge_client.local_data import checked_local_data
from edge_client.model_fetch import FetchStep, Held, ModelFetcher, started_over
from edge_client.narration import DeviceNarrator, eligibility_kind_changed
from edge_client.outbox import Outbox, OutboxFull
from edge_client.secagg_session import DeviceSecAgg
from edge_client.shared.codecs import CodecConfig, ErrorFeedback, encode_vector
from edge_client.shared.codecs.dp import DeviceDp, clip_and_noise
from edge_client.shared.identity import load_or_create_identity, parse_public_key
from edge_client.shared.inbox import Inbox
from edge_client.shared.protocol import (
    DEFAULT_CHUNK_SIZE,
    Ack,
    ModelManifest,
    RemoteProtocolError,
    Status,
    Task,
    Topics,
    Update,
    decode,
    encode,
    split,
)
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.shared.protocol.messages import unpack_map
from edge_client.shared.protocol.reasons import reason_kind
from edge_client.shared.protocol.seeds import training_seed, update_seed
from edge_client.shared.protocol.signing import is_signed, open_envelope, seal, verify_envelope
from edge_client.shared.protocol.tensors import Weights, flatten_sorted, unflatten_like
from edge_client.shared.protocol.topics import check_name
from edge_client.shared.secagg.task import SecAggTask
from edge_client.shared.security import BrokerAuth, DeviceSecurity
from edge_client.shared.transport import Connected, Disconnected, Inbound, MqttLink, Will
from edge_client.training.trainer import Trainer

log = logging.getLogger(__name__)
MAX_RESIDUAL_AGE = 20  # model versions after which an error-feedback residual is dropped


@dataclass
class ClientConfig:
    """Everything a device owner tunes; see docs/configuration.md."""

    device_id: str
    federation: str = "default"
    host: str = "127.0.0.1"
    port: int = 1883
    state_dir: Path = Path("fedge-state")
    keepalive_s: int = 30
    ack_timeout_s: float = 30.0  # resend an unacknowledged update after this long
    max_model_bytes: int = 64 * 2**20
    max_model_elements: int = 16_000_000
    outbox_max: int = 64
    inbound_queue_bytes: int = 8 * 2**20  # received messages waiting for the loop
    exit_when_done: bool = True  # return from run() when the aggregator says it is done
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    eligibility_check_s: float = 5.0  # how often to re-check while waiting
    sleep_between_tasks: bool = False  # disconnect until the aggregator's next check-in
    no_task_warning_s: float = 60.0  # connected this long with no task: warn (federation?)
    status_interval_s: float = 120.0  # republish the (retained) status at least this often
    security: DeviceSecurity = field(default_factory=DeviceSecurity)
    broker_auth: BrokerAuth = field(default_factory=BrokerAuth)

    def __post_init__(self) -> None:
        check_name("device", self.device_id)
        if self.eligibility_check_s <= 0 or self.ack_timeout_s <= 0:
            raise ValueError("eligibility_check_s and ack_timeout_s must be > 0")
        if not self.no_task_warning_s > 0:
            raise ValueError(f"no_task_warning_s must be > 0, not {self.no_task_warning_s}")
        if not self.status_interval_s > 0:
            raise ValueError(f"status_interval_s must be > 0, not {self.status_interval_s}")
        if self.inbound_queue_bytes < 64 * 1024:
            raise ValueError(f"inbound_queue_bytes must be >= 65536, "
                             f"not {self.inbound_queue_bytes}")
        check_name("federation", self.federation)
        self.state_dir = Path(self.state_dir)


@dataclass
class ClientStats:
    updates_sent: int = 0
    acks: Counter = field(default_factory=Counter)
    acked: list[tuple[str, str]] = field(default_factory=list)  # (nonce, status) as received
    train_s: list[float] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    skipped: Counter = field(default_factory=Counter)  # tasks not done, by reason
    stopped_mid_training: int = 0
    sleeps: int = 0  # times it went off the broker until the aggregator's check-in time
    update_bytes: int = 0  # encoded update messages made
    dense_bytes: int = 0  # what those updates would be as dense float32
    models_via_delta: int = 0
    bad_messages: int = 0  # inbound messages refused or that failed to handle


@dataclass
class _Sent:
    payload: bytes
    last_sent: float = 0.0


class EdgeClient:
    """Embeds in a device app: give it a Trainer and the device's own data, then run()."""

    def __init__(self, config: ClientConfig, trainer: Trainer, x: np.ndarray,
                 y: np.ndarray, policy: EligibilityPolicy | None = None,
                 app_busy: Callable[[], bool] | None = None,
                 on_model: Callable[[int, dict, Weights], None] | None = None) -> None:
        self.config = config
        self.policy = policy or EligibilityPolicy.from_config(config.eligibility, app_busy)
        self._decision: Decision | None = None
        self._next_check = 0.0
        self._status_sent = 0.0  # monotonic time of the last status published
        self._skipped_tasks: set[str] = set()
        self._sleep_until: float | None = None
        self.trainer = trainer
        self.on_model = on_model  # (version, arch, weights) of each global model, e.g. a Predictor
        self._data = checked_local_data(x, y)  # one tuple, swapped whole by set_data
        self.topics = Topics(config.federation)
        self.stats = ClientStats()
        self.events = Inbox(config.inbound_queue_bytes)  # bounded: the broker holds the rest
        self.disk = DeviceState(config.state_dir, config.device_id, config.max_model_elements)
        self.outbox = Outbox(config.state_dir / "outbox", config.outbox_max)
        self._fetcher = ModelFetcher(self.topics, config.max_model_bytes,
                                     config.max_model_elements)
        self._task: Task | None = None
        self._global: Weights | None = None
        self._arch: dict = {}
        self._feedback: ErrorFeedback | None = None
        self._feedback_version: int | None = None
        self._model_sha256: str | None = None  # of the held model's encoding
        self._rng = np.random.default_rng()
        self._dp_rng = np.random.default_rng()  # OS entropy: DP noise nobody can redraw
        self.model_version: int | None = None
        self._done_tasks: list[str] = []
        self._sent: dict[str, _Sent] = {}
        self._stop = threading.Event()
        security = config.security
        self.identity = (load_or_create_identity(Path(security.key_file))
                         if security.key_file else None)
        self._pinned = (parse_public_key(security.aggregator_key)
                        if security.aggregator_key else None)
        self.secagg = DeviceSecAgg(config.device_id, self.topics, config.max_model_bytes,
                                   self._sealed)  # secure rounds (docs/secure-aggregation.md)
        self._session = os.urandom(6).hex()  # tells this run's statuses from another's
        self.link = MqttLink(
            client_id=f"fedge-{config.federation}-dev-{config.device_id}",
            host=config.host, port=config.port, events=self.events,
            keepalive_s=config.keepalive_s,
            will=Will(self.topics.status(config.device_id), self._status_payload(False)),
            tls=config.broker_auth.tls(), credentials=config.broker_auth.credentials(),
        )
        self.narrator = DeviceNarrator(config.device_id, config.federation, self.topics.task,
                                       no_task_warning_s=config.no_task_warning_s)
        self._load_state()

    # ------------------------------------------------------------ state on disk
    def _load_state(self) -> None:
        """Resume after a reboot: the last model, tasks already done, unacked updates."""
        self._done_tasks = self.disk.load_done_tasks()
        model = self.disk.load_model()
        if model is not None:
            try:
                self._set_global(model.version, model.tensors, model.arch)
            except ValueError as exc:
                log.error("%s: stored model does not fit the trainer (%s); will fetch it again",
                          self.config.device_id, exc)
            else:
                self._model_sha256 = self.disk.model_sha256()
                size = sum(w.size for w in model.tensors.values())
                loaded = self.disk.load_residual(size)
                if loaded is not None:
                    self._feedback, self._feedback_version = loaded
        for entry in self.outbox.entries():
            try:
                body = (open_envelope(entry.payload).body if is_signed(entry.payload)
                        else entry.payload)
                task_id = str(unpack_map(body)["task_id"])
            except (RemoteProtocolError, KeyError) as exc:
                self.outbox.set_aside(entry.nonce, exc)
                continue
            self._sent[entry.nonce] = _Sent(entry.payload)
            if task_id not in self._done_tasks:
                self._done_tasks.append(task_id)

    def _save_feedback(self) -> None:
        if self._feedback is not None:
            feedback, version = self._feedback, self._feedback_version
            self._persist("error-feedback residual",
                          lambda: self.disk.save_residual(feedback, version))

    def _save_state(self) -> None:
        self._persist("task list", lambda: self.disk.save_done_tasks(self._done_tasks,
                                                                     self.model_version))

    def _persist(self, what: str, write: Callable[[], None]) -> bool:
        """Write state that helps after a reboot but loses no update when it fails (the
        outbox is written first): a full or read-only disk is logged, not fatal."""
        try:
            write()
        except OSError as exc:
            log.error("%s: could not save the %s in %s (%s); carrying on, will save it "
                      "again next time", self.config.device_id, what, self.config.state_dir,
                      exc.strerror or exc)
            return False
        return True

    # ------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Block until the federation is done (or `stop` is set); reconnects on its own."""
        if stop is not None:
            self._stop = stop
        self.narrator.started(self.config.host, self.config.port, self.config.state_dir,
                              self.model_version, len(self._sent),
                              self.config.eligibility.enabled, self.identity is not None)
        self._eligible()  # before the first status: it must not claim eligible unchecked
        self.link.start()
        try:
            while not self._stop.is_set():
                try:
                    event = self.events.get(timeout=self._next_wakeup())
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle(event)
                now = time.monotonic()
                if self._sleeping(now):
                    continue
                self._resend_due(now)
                if now >= self._next_check:
                    self._recheck()
                self.narrator.tick()
                if self._finished():
                    break
        finally:
            self._shutdown()

    def set_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train on new local data from the next task on: devices keep collecting samples
        (the firmware bridge's MCU windows, an app's sensor log) while they federate.
        Safe from any thread; a training run in progress keeps the data it started with."""
        self._data = checked_local_data(x, y)  # ValueError says what is wrong

    @property
    def x(self) -> np.ndarray:
        return self._data[0]

    @property
    def y(self) -> np.ndarray:
        return self._data[1]

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ eligibility and pacing
    def _eligible(self) -> Decision:
        """Ask the policy; a change is reported on the status topic at once."""
        decision = self.policy.check(time.time())
        # Compare reasons without their readings, or every check would publish a status.
        before, self._decision = self._decision, decision
        if eligibility_kind_changed(decision, before):
            self.narrator.eligibility_changed(decision, before)
            if self.link.connected:
                self._publish_status(True)
        return decision

    def _recheck(self) -> None:
        """Periodic look while idle: a device that became eligible picks up its task."""
        self._next_check = time.monotonic() + self.config.eligibility_check_s
        decision = self._eligible()
        if (self.link.connected and time.monotonic() - self._status_sent
                >= self.config.status_interval_s):
            self._publish_status(True)  # fresh, so a signed one stays within the clock skew
        if decision.eligible:
            self._maybe_train()

    def _sleeping(self, now: float) -> bool:
        """Honour the aggregator's pace: stay off the broker until the check-in time."""
        if self._sleep_until is None:
            return False
        if now < self._sleep_until:
            return True
        self._sleep_until = None
        self.link.start()
        return False

    def _maybe_sleep(self, ack: Ack) -> None:
        if not (self.config.sleep_between_tasks and ack.next_checkin_s) or self._sent:
            return
        log.info("%s: sleeping %.1f s until the next check-in", self.config.device_id,
                 ack.next_checkin_s)
        self._publish_status(False, reason=f"sleeping {ack.next_checkin_s:.0f} s")
        self.link.stop()
        self.stats.sleeps += 1
        self._sleep_until = time.monotonic() + ack.next_checkin_s

    def _account_for(self, task: Task) -> None:
        """Every round a device sits out is counted once, with why: the device-side view
        of participation that the demo summary reports."""
        if task.done or task.task_id in self._done_tasks:
            return
        decision = self._eligible()
        if not decision.eligible:
            self._skip(task, decision.reasons[0])
        elif not task.invites(self.config.device_id):
            self._skip(task, "not invited")

    def _skip(self, task: Task, reason: str) -> None:
        """Count a task this device could not do, once per task and reason."""
        if task.task_id not in self._skipped_tasks:  # one reason per device-round
            self._skipped_tasks.add(task.task_id)
            self.stats.skipped[reason_kind(reason)] += 1
            if reason != "not invited":  # said with the task already
                self.narrator.skipped(task, reason)

    def _finished(self) -> bool:
        """Done when the aggregator says so and the final model is here.

        Unacked updates, if any, stay in the outbox on disk for a later run.
        """
        task = self._task
        if not (self.config.exit_when_done and task is not None and task.done):
            return False
        return self.model_version is not None and self.model_version >= task.model_version

    def _next_wakeup(self) -> float:
        if self._sleep_until is not None:
            return max(0.01, min(0.5, self._sleep_until - time.monotonic()))
        if not self._sent:
            return 0.5
        oldest = min(s.last_sent for s in self._sent.values())
        due = oldest + self.config.ack_timeout_s - time.monotonic()
        return min(0.5, max(0.01, due))

    def _shutdown(self) -> None:
        if self.link.connected:
            self._publish_status(False)
        if self._sleep_until is None:
            self.link.stop()
        self.stats.bytes_up = self.link.bytes_out
        self.stats.bytes_down = self.link.bytes_in

    def _handle(self, event: object) -> None:
        if isinstance(event, Connected):
            self._on_connected()
        elif isinstance(event, Disconnected):
            self.narrator.disconnected(event.reason)
        elif isinstance(event, Inbound):
            try:  # the boundary of one message: none can stop the device loop
                self._on_message(event)
            except RemoteProtocolError as exc:
                self.stats.bad_messages += 1
                log.warning("%s: ignored a bad message on %s: %s", self.config.device_id,
                            event.topic, exc.reason)
            except Exception as exc:  # our bug, not the sender's: log it and go on
                self.stats.bad_messages += 1
                log.error("%s: handling a message on %s failed: %s", self.config.device_id,
                          event.topic, exc, exc_info=True)

    def _on_connected(self) -> None:
        me = self.config.device_id
        for topic in (self.topics.model, self.topics.task, self.topics.ack(me),
                      self.topics.secagg_to(me), self.topics.status(me)):
            self.link.subscribe(topic)
        self.narrator.connected(self.config.host, self.config.port)
        self._publish_status(True)
        for nonce in list(self._sent):
            self._publish_update(nonce)
        self._publish_all(self.secagg.resend())

    def _from_aggregator(self, payload: bytes) -> bytes:
        """A manifest, task or ack, checked against the pinned aggregator key if any."""
        if not is_signed(payload):
            if self._pinned is not None:
                raise RemoteProtocolError("unsigned message refused: this device pins the "
                                          "aggregator's key")
            return payload
        envelope = open_envelope(payload)
        if self._pinned is None:
            return envelope.body
        return verify_envelope(envelope, self._pinned)

    def _on_message(self, event: Inbound) -> None:
        topic, payload = event.topic, event.payload
        if not payload:
            return  # a cleared retained message
        if topic in (self.topics.model, self.topics.task,
                     self.topics.ack(self.config.device_id)):
            payload = self._from_aggregator(payload)
        if topic == self.topics.model:
            manifest = decode(payload, expect=ModelManifest)
            assert isinstance(manifest, ModelManifest)
            self._on_manifest(manifest)
        elif topic == self.topics.task:
            task = decode(payload, expect=Task)
            assert isinstance(task, Task)
            self._task = task
            self.narrator.task(task, task.task_id in self._done_tasks,
                               self.config.exit_when_done)
            self._account_for(task)
            self._maybe_train()
        elif topic == self.topics.status(self.config.device_id):
            body = open_envelope(payload).body if is_signed(payload) else payload
            status = decode(body, expect=Status)
            assert isinstance(status, Status)
            self.narrator.own_status(status, self._session)
        elif topic == self.topics.ack(self.config.device_id):
            ack = decode(payload, expect=Ack)
            assert isinstance(ack, Ack)
            self._on_ack(ack)
        elif topic == self.topics.secagg_to(self.config.device_id):
            self._publish_all(self.secagg.on_chunk(payload, self._from_aggregator))
        else:
            step = self._fetcher.on_chunk(topic, payload, self._held())
            if step is not None:
                self._apply_fetch(step)

    # ------------------------------------------------------------ downlink
    def _on_manifest(self, manifest: ModelManifest) -> None:
        if manifest.size > self.config.max_model_bytes:
            raise RemoteProtocolError(f"model {manifest.version} is {manifest.size} bytes, "
                                      f"over this device's limit")
        if started_over(manifest, self.model_version, self._model_sha256):
            self._start_over(manifest)
        self._apply_fetch(self._fetcher.on_manifest(manifest, self._held()))

    def _start_over(self, manifest: ModelManifest) -> None:
        """Forget the old run's model, tasks and residual; unacked updates stay in the
        outbox until the new aggregator answers them (it refuses their unknown tasks)."""
        log.warning("%s: the aggregator's model is version %d (%s...), not the history of "
                    "the version %s this device holds: the federation started over; "
                    "following it from the start", self.config.device_id, manifest.version,
                    manifest.sha256[:12], self.model_version)
        self._global, self._arch, self.model_version = None, {}, None
        self._model_sha256 = None
        self._feedback, self._feedback_version = None, None
        self._done_tasks = []
        self._save_state()

    def _held(self) -> Held:
        return Held(self.model_version, self._global, self._arch)

    def _apply_fetch(self, step: FetchStep) -> None:
        for topic in step.unsubscribe:
            self.link.unsubscribe(topic)
        for topic in step.subscribe:
            self.link.subscribe(topic)
        if step.model is None:
            return
        model = step.model
        try:
            self._set_global(model.version, model.tensors, model.arch)
        except ValueError as exc:
            raise RemoteProtocolError(f"model {model.version} does not fit this device's "
                                      f"trainer: {exc}") from None
        self.stats.models_via_delta += int(step.via_delta)
        self.narrator.model_installed(model.version, step.via_delta, len(step.blob))
        self._persist(f"model version {model.version}",
                      lambda: self.disk.save_model(step.blob, model.version))
        self._model_sha256 = sha256_hex(step.blob)
        self._save_state()
        self._publish_status(True)
        self._maybe_train()

    def _set_global(self, version: int, tensors: Weights, arch: dict) -> None:
        self.trainer.set_weights(_copy(tensors))  # validates names and shapes
        self._global = _copy(tensors)
        self._arch = arch
        self.model_version = version
        if self.on_model is not None:
            try:
                self.on_model(version, arch, _copy(tensors))
            except Exception:  # the app's serving must never stop the device loop
                log.exception("%s: on_model failed for version %d", self.config.device_id,
                              version)

    # ------------------------------------------------------------ training and uplink
    def _maybe_train(self) -> None:
        task, me = self._task, self.config.device_id
        if task is None or task.done or self._global is None:
            return
        if task.model_version != self.model_version or not task.invites(me):
            return
        if task.task_id in self._done_tasks:
            return
        if len(self.outbox) >= self.outbox.max_entries:
            log.error("%s: outbox full; not training until acks arrive", me)
            return
        try:
            codec = CodecConfig.from_wire(task.codec) if task.codec is not None else None
            dp = DeviceDp.from_wire(task.dp) if task.dp is not None else None
            secagg = SecAggTask.from_wire(task.secagg) if task.secagg is not None else None
        except RemoteProtocolError as exc:
            log.error("%s: task %s asks for a codec, DP or secure aggregation this device "
                      "cannot use: %s", me, task.task_id, exc.reason)
            self._done_tasks.append(task.task_id)  # never retried; the round goes on
            return
        decision = self._eligible()
        if not decision.eligible:
            self._skip(task, decision.reasons[0])
            return
        feedback_before = self._feedback_snapshot()
        self.narrator.training(task, len(self._data[0]))
        update = self._train(task, None if secagg else codec, dp)
        if update is None:
            return  # stopped at a batch boundary: nothing is published
        if secagg is not None:  # the masked round replaces the update, its outbox and ack
            self._done_tasks.append(task.task_id)
            self._save_state()
            self._publish_all(self.secagg.join(task, secagg, flatten_sorted(update.tensors)))
            return
        payload = encode(update)
        if self.identity is not None:
            payload = seal(payload, self.identity)  # resends repeat these exact bytes
        try:
            self.outbox.put(update.nonce, payload)
        except OutboxFull as exc:
            log.error("%s: %s", me, exc)
            self._restore_feedback(feedback_before)
            return
        except OSError as exc:  # a full or read-only disk: train again at the next check
            log.error("%s: task %s: could not write the update to the outbox in %s (%s); "
                      "nothing sent, trying again in %.0f s", me, task.task_id,
                      self.outbox.folder, exc.strerror or exc, self.config.eligibility_check_s)
            self._restore_feedback(feedback_before)
            return
        self._save_feedback()  # after the outbox: a crash between loses no update
        self.stats.update_bytes += len(payload)
        self.stats.dense_bytes += 4 * sum(w.size for w in self._global.values())
        self._done_tasks.append(task.task_id)
        self._save_state()
        self._sent[update.nonce] = _Sent(payload)
        self._publish_update(update.nonce)
        self.stats.updates_sent += 1
        self.narrator.sent(task, update.nonce, len(payload), update.metrics.get("train_s", 0.0))

    def _feedback_snapshot(self) -> tuple[ErrorFeedback | None, np.ndarray | None, int | None]:
        """The residual as it stands, to put back if the update made from it is not kept."""
        feedback = self._feedback
        return feedback, None if feedback is None else feedback.residual, self._feedback_version

    def _restore_feedback(self, snapshot: tuple[ErrorFeedback | None, np.ndarray | None,
                                                int | None]) -> None:
        feedback, residual, version = snapshot
        if feedback is not None and residual is not None:
            feedback.residual = residual  # record() rebinds, so this is the old array
        self._feedback, self._feedback_version = feedback, version

    def _train(self, task: Task, codec: CodecConfig | None,
               dp: DeviceDp | None = None) -> Update | None:
        """Train from the global model; None when training was stopped part-way (or, under
        DP, gave an update that cannot be sent)."""
        assert self._global is not None
        self.trainer.set_weights(_copy(self._global))
        x, y = self._data  # one consistent pair, even if set_data runs meanwhile
        # How the global model does on this device's own data: reported with the update,
        # so the gateway sees quality where the data is (the data itself stays here).
        before = self.trainer.evaluate(x, y)
        t = task.train
        seed = training_seed(self.config.device_id, task.round, task.model_version)
        self._rng = np.random.default_rng(seed)  # stochastic rounding, reproducible
        fit = dataclasses.replace(t, seed=seed)
        result = self.trainer.fit(x, y, fit, should_stop=self._should_stop)
        if result.stopped_early and not self._keep_early_stop(task, result.batches):
            return None
        self.stats.train_s.append(result.train_s)
        local = self.trainer.get_weights()
        delta = {name: (local[name] - self._global[name]).astype(np.float32)
                 for name in self._global}
        update = Update(device_id=self.config.device_id, task_id=task.task_id,
                        nonce=os.urandom(16).hex(), base_version=task.model_version,
                        num_samples=len(x), tensors=delta,
                        metrics={"train_loss": result.loss, "train_s": result.train_s,
                                 "local_accuracy": before.get("accuracy", float("nan")),
                                 "local_loss": before.get("loss", float("nan"))},
                        created_at=time.time())
        if dp is not None:
            try:
                update = self._add_dp_noise(update, dp)
            except ValueError as exc:  # a diverged run: no noisy update can be made of it
                log.error("%s: task %s: no update sent: %s", self.config.device_id,
                          task.task_id, exc)
                self._done_tasks.append(task.task_id)  # retraining would diverge again
                self._save_state()
                return None
        return update if codec is None else self._compress(update, codec)

    def _add_dp_noise(self, update: Update, dp: DeviceDp) -> Update:
        """Distributed DP: the whole delta clipped to C, plus this device's noise share."""
        vector, _ = clip_and_noise(flatten_sorted(update.tensors), dp, self._dp_rng)
        return dataclasses.replace(update, tensors=unflatten_like(vector, update.tensors),
                                   metrics={**update.metrics, **dp.metrics()})

    def _keep_early_stop(self, task: Task, batches: int) -> bool:
        """A fit that stopped early: ours to drop (shutdown, policy), or the trainer's own
        stop (a time budget, say), whose batches are sent like a shorter fit."""
        me = self.config.device_id
        if self._stop.is_set():
            return False
        decision = self._decision
        if decision is not None and not decision.eligible:
            reason = decision.reasons[0] if decision.reasons else decision.reason
            log.info("%s: task %s: training stopped at a batch boundary: %s; nothing sent",
                     me, task.task_id, reason)
            self.stats.stopped_mid_training += 1
            self._skip(task, f"stopped: {reason}")
            return False
        if batches < 1:
            log.info("%s: task %s: the trainer stopped before its first batch; nothing sent",
                     me, task.task_id)
            self._skip(task, "stopped: trainer")
            return False
        log.info("%s: task %s: the trainer stopped on its own after %d batches; sending "
                 "what it learned", me, task.task_id, batches)
        return True

    def _should_stop(self) -> bool:
        """Checked between batches: shutting down, or the policy stopped holding."""
        return self._stop.is_set() or not self._eligible().eligible

    def _compress(self, update: Update, codec: CodecConfig) -> Update:
        """Encode the delta with the task's codec, carrying what is left out forward."""
        vector = flatten_sorted(update.tensors)
        if codec.error_feedback:
            feedback = self._feedback_for(vector.size, update.base_version)
            vector = feedback.compensate(vector)
        encoded = encode_vector(vector, codec, update_seed(update.task_id, update.device_id),
                                self._rng)
        if codec.error_feedback:
            feedback.record(vector, encoded.sent)
            self._feedback_version = update.base_version
        return dataclasses.replace(update, tensors={}, codec=codec.to_wire(),
                                   blob=encoded.blob)

    def _feedback_for(self, size: int, version: int) -> ErrorFeedback:
        """The residual, unless it belongs to another model shape or is too old to help."""
        stale = (self._feedback_version is None
                 or version - self._feedback_version > MAX_RESIDUAL_AGE)
        if self._feedback is None or self._feedback.residual.size != size or stale:
            self._feedback = ErrorFeedback(size)
        return self._feedback

    def _publish_update(self, nonce: str) -> None:
        sent = self._sent[nonce]
        sent.last_sent = time.monotonic()
        topic = self.topics.update(self.config.device_id)
        chunk_size = self._task.chunk_size if self._task else DEFAULT_CHUNK_SIZE
        for chunk in split(sent.payload, nonce, chunk_size):
            if not self.link.publish(topic, chunk):
                return  # resent in full after the next Connected

    def _sealed(self, body: bytes) -> bytes:
        """A message signed with this device's key, when it has one."""
        return body if self.identity is None else seal(body, self.identity)

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.link.publish(topic, payload)

    def _resend_due(self, now: float) -> None:
        for nonce, sent in list(self._sent.items()):
            if now - sent.last_sent > self.config.ack_timeout_s and self.link.connected:
                log.info("%s: no ack for %s after %.0f s; resending", self.config.device_id,
                         nonce[:8], self.config.ack_timeout_s)
                self._publish_update(nonce)

    def _on_ack(self, ack: Ack) -> None:
        if ack.nonce not in self._sent:
            return  # an ack for an update already cleared (a resend's second ack)
        self.stats.acks[ack.status] += 1
        self.stats.acked.append((ack.nonce, ack.status))
        self.narrator.acked(ack)
        self.outbox.remove(ack.nonce)
        del self._sent[ack.nonce]
        self._maybe_sleep(ack)

    def _publish_status(self, online: bool, reason: str | None = None) -> None:
        self._status_sent = time.monotonic()
        self.link.publish(self.topics.status(self.config.device_id),
                          self._status_payload(online, reason), retain=True)

    def _status_payload(self, online: bool, reason: str | None = None) -> bytes:
        """The status, signed when the device has a key (also the last will, sealed once
        at start: the aggregator takes "offline" statuses at any age)."""
        d = self._decision
        battery = d.facts.get("battery_pct") if d is not None else None
        return self._sealed(encode(Status(
            device_id=self.config.device_id, online=online,
            eligible=d.eligible if d is not None else True,
            reason=reason if reason is not None else (d.reason if d is not None else ""),
            model_version=self.model_version, time=time.time(),
            battery_pct=float(battery) if isinstance(battery, int | float) else None,
            session=self._session)))


def _copy(weights: Weights) -> Weights:
    """Trainers may update arrays in place; never hand them our reference copy."""
    return {name: array.copy() for name, array in weights.items()}
