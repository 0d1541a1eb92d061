"""The device's shell: the MQTT link, the loop thread, the clock, the disk, the trainer.

What the device decides lives in the sans-IO session (edge_client.session): this class
turns link events and ticks into session events, carries out the actions the session
returns, and feeds the answers (an eligibility decision, a finished fit, an outbox
write) straight back. Everything runs on the caller's thread; the MQTT link only queues
events, so no state here needs a lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from edge_client.client_config import ClientConfig
from edge_client.device_state import DeviceState
from edge_client.eligibility import Decision, EligibilityPolicy
from edge_client.local_data import checked_local_data
from edge_client.narration import DeviceNarrator
from edge_client.outbox import Outbox, OutboxFull
from edge_client.session import DeviceSession, Instant
from edge_client.session import actions as act
from edge_client.session.events import (
    EligibilityChecked,
    Event,
    FitFinished,
    LinkDown,
    LinkUp,
    ModelInstalled,
    ModelRefused,
    Resumed,
    ShuttingDown,
    Tick,
    UpdateNotStored,
    UpdateStored,
)
from edge_client.session.held_model import HeldModel, copy_weights
from edge_client.session.keys import load_device_keys
from edge_client.session.stats import ClientStats
from edge_client.shared.inbox import Inbox
from edge_client.shared.protocol import RemoteProtocolError, Task, Topics
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.transport import Connected, Disconnected, Inbound, MqttLink, Will
from edge_client.training.trainer import Trainer

__all__ = ["ClientConfig", "ClientStats", "EdgeClient"]
log = logging.getLogger(__name__)


class EdgeClient:
    """Embeds in a device app: give it a Trainer and the device's own data, then run()."""

    def __init__(self, config: ClientConfig, trainer: Trainer, x: np.ndarray,
                 y: np.ndarray, policy: EligibilityPolicy | None = None,
                 app_busy: Callable[[], bool] | None = None,
                 on_model: Callable[[int, dict, Weights], None] | None = None) -> None:
        self.config = config
        self.policy = policy or EligibilityPolicy.from_config(config.eligibility, app_busy)
        self.trainer = trainer
        self.on_model = on_model  # (version, arch, weights) of each global model, e.g. a Predictor
        self._data = checked_local_data(x, y)  # one tuple, swapped whole by set_data
        self.events = Inbox(config.inbound_queue_bytes)  # bounded: the broker holds the rest
        self.disk = DeviceState(config.state_dir, config.device_id, config.max_model_elements)
        self.outbox = Outbox(config.state_dir / "outbox", config.outbox_max)
        self._stop = threading.Event()
        keys = load_device_keys(config.security)  # cryptography only when configured
        self.identity = keys.identity
        self.narrator = DeviceNarrator(config.device_id, config.federation,
                                       Topics(config.federation).task,
                                       no_task_warning_s=config.no_task_warning_s)
        self.session = DeviceSession(config, self.narrator, keys)
        self.topics, self.stats = self.session.topics, self.session.stats
        self.link = MqttLink(
            client_id=f"fedge-{config.federation}-dev-{config.device_id}",
            host=config.host, port=config.port, events=self.events,
            keepalive_s=config.keepalive_s,
            will=Will(self.topics.status(config.device_id), self.session.will_payload(_now())),
            tls=config.broker_auth.tls(), credentials=config.broker_auth.credentials(),
        )
        self._feed(self._resumed())

    # ------------------------------------------------------------ public API
    @property
    def model_version(self) -> int | None:
        return self.session.model_version

    @property
    def task(self) -> Task | None:
        """The latest task the aggregator published."""
        return self.session.task

    _task = task  # the name tests and tools used before the session split

    @property
    def secagg(self):  # DeviceSecAgg, imported only when secure rounds are used  # noqa: ANN201
        return self.session.secagg

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

    def run(self, stop: threading.Event | None = None) -> None:
        """Block until the federation is done (or `stop` is set); reconnects on its own."""
        if stop is not None:
            self._stop = stop
        self.narrator.started(self.config.host, self.config.port, self.config.state_dir,
                              self.model_version, len(self.session.pending),
                              self.config.eligibility.enabled, self.identity is not None)
        self._feed(EligibilityChecked(self._check()))  # the first status must not guess
        self.link.start()
        try:
            while not self._stop.is_set():
                try:
                    event = self.events.get(timeout=self.session.poll_timeout(time.monotonic()))
                except queue.Empty:
                    event = None
                if event is not None:
                    self._on_link_event(event)
                self._feed(Tick())
                if self.session.sleeping:
                    continue
                self.narrator.tick()
                if self.session.finished:
                    break
        finally:
            self._feed(ShuttingDown())
            if not self.session.sleeping:
                self.link.stop()
            self.stats.bytes_up, self.stats.bytes_down = self.link.bytes_out, self.link.bytes_in

    # ------------------------------------------------------------ events in
    def _on_link_event(self, event: object) -> None:
        if isinstance(event, Connected):
            self.narrator.connected(self.config.host, self.config.port)
            self._feed(LinkUp())
        elif isinstance(event, Disconnected):
            self.narrator.disconnected(event.reason)
            self._feed(LinkDown(event.reason))
        elif isinstance(event, Inbound):
            try:  # the boundary of one message: none can stop the device loop
                self._do(self.session.receive(event.topic, event.payload, _now()))
            except RemoteProtocolError as exc:
                self.stats.bad_messages += 1
                log.warning("%s: ignored a bad message on %s: %s", self.config.device_id,
                            event.topic, exc.reason)
            except Exception as exc:  # our bug, not the sender's: log it and go on
                self.stats.bad_messages += 1
                log.error("%s: handling a message on %s failed: %s", self.config.device_id,
                          event.topic, exc, exc_info=True)

    def _feed(self, event: Event) -> None:
        self._do(self.session.handle(event, _now()))

    def _do(self, actions: list[act.Action]) -> None:
        for action in actions:
            answer = self._execute(action)
            if answer is not None:
                self._feed(answer)

    # ------------------------------------------------------------ actions out
    def _execute(self, action: act.Action) -> Event | None:  # noqa: C901 - one case each
        match action:
            case act.Publish(topic, payload, retain):
                self.link.publish(topic, payload, retain=retain)
            case act.PublishUpdate(_, topic, chunks):
                for chunk in chunks:
                    if not self.link.publish(topic, chunk):
                        break  # resent in full after the next Connected
            case act.Subscribe(topic):
                self.link.subscribe(topic)
            case act.Unsubscribe(topic):
                self.link.unsubscribe(topic)
            case act.CheckEligibility():
                return EligibilityChecked(self._check())
            case act.InstallModel(version, tensors, arch):
                try:
                    self._install(version, tensors, arch)
                except ValueError as exc:
                    return ModelRefused(version, str(exc))
                return ModelInstalled(version)
            case act.StartFit():
                return self._fit(action)
            case act.StoreUpdate(nonce, payload):
                return self._store(nonce, payload)
            case act.RemoveUpdate(nonce):
                self.outbox.remove(nonce)
            case act.SetAsideUpdate(nonce, why):
                self.outbox.set_aside(nonce, why)
            case act.SaveModel(version, blob):
                self._persist(f"model version {version}",
                              lambda: self.disk.save_model(blob, version))
            case act.SaveTasks(done, version):
                self._persist("task list", lambda: self.disk.save_done_tasks(list(done),
                                                                             version))
            case act.SaveResidual(feedback, version):
                self._persist("error-feedback residual",
                              lambda: self.disk.save_residual(feedback, version))
            case act.SleepUntil():
                self.link.stop()
            case act.Wake():
                self.link.start()
        return None  # StopFit is read by _should_stop

    def _check(self) -> Decision:
        return self.policy.check(time.time())

    def _install(self, version: int, tensors: Weights, arch: dict) -> None:
        self.trainer.set_weights(copy_weights(tensors))  # ValueError: names or shapes differ
        if self.on_model is not None:
            try:
                self.on_model(version, arch, copy_weights(tensors))
            except Exception:  # the app's serving must never stop the device loop
                log.exception("%s: on_model failed for version %d", self.config.device_id,
                              version)

    def _fit(self, start: act.StartFit) -> FitFinished:
        x, y = self._data  # one consistent pair, even if set_data runs meanwhile
        self.narrator.training(start.task, len(x))
        self.trainer.set_weights(start.weights)
        before = self.trainer.evaluate(x, y)
        result = self.trainer.fit(x, y, start.config, should_stop=self._should_stop)
        return FitFinished(start.task.task_id, result, self.trainer.get_weights(), before,
                           len(x), shutting_down=self._stop.is_set())

    def _should_stop(self) -> bool:
        """Checked between batches: shutting down, or the session stops the fit."""
        if self._stop.is_set():
            return True
        actions = self.session.handle(EligibilityChecked(self._check()), _now())
        self._do(actions)
        return any(isinstance(a, act.StopFit) for a in actions)

    def _store(self, nonce: str, payload: bytes) -> Event:
        try:
            self.outbox.put(nonce, payload)
        except OutboxFull as exc:
            return UpdateNotStored(nonce, str(exc), full=True)
        except OSError as exc:
            return UpdateNotStored(nonce, f"could not write the update to the outbox in "
                                          f"{self.outbox.folder} ({exc.strerror or exc})")
        return UpdateStored(nonce)

    def _persist(self, what: str, write: Callable[[], None]) -> None:
        """Write state that helps after a reboot but loses no update when it fails (the
        outbox is written first): a full or read-only disk is logged, not fatal."""
        try:
            write()
        except OSError as exc:
            log.error("%s: could not save the %s in %s (%s); carrying on, will save it "
                      "again next time", self.config.device_id, what, self.config.state_dir,
                      exc.strerror or exc)

    def _resumed(self) -> Resumed:
        """What survived a reboot: the last model (installed now), tasks done, the outbox."""
        model, held, residual = self.disk.load_model(), None, None
        if model is not None:
            try:
                self._install(model.version, model.tensors, model.arch)
            except ValueError as exc:
                log.error("%s: stored model does not fit the trainer (%s); will fetch it "
                          "again", self.config.device_id, exc)
            else:
                held = HeldModel(model.version, copy_weights(model.tensors), model.arch,
                                 self.disk.model_sha256())
                residual = self.disk.load_residual(sum(w.size for w in model.tensors.values()))
        return Resumed(tuple(self.disk.load_done_tasks()), held, residual,
                       tuple(self.outbox.entries()))


def _now() -> Instant:
    return Instant(time.monotonic(), time.time())
