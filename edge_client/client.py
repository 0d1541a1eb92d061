"""The device's shell: the MQTT link, the loop, the clock; the trainer and the disk
through DeviceIO (edge_client.device_io).

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
from typing import TYPE_CHECKING

import numpy as np

from edge_client.client_config import ClientConfig
from edge_client.device_io import DeviceIO, TrainerFailed
from edge_client.eligibility import Decision, EligibilityPolicy
from edge_client.local_data import checked_local_data
from edge_client.narration import DeviceNarrator
from edge_client.session import DeviceSession, Instant
from edge_client.session import actions as act
from edge_client.session.events import (
    EligibilityChecked,
    Event,
    LinkDown,
    LinkUp,
    ShuttingDown,
    Tick,
)
from edge_client.session.keys import load_device_keys
from edge_client.session.stats import ClientStats
from edge_client.shared.inbox import Inbox
from edge_client.shared.protocol import RemoteProtocolError, Task, Topics
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.transport import Connected, Disconnected, Inbound, MqttLink, Will
from edge_client.training.trainer import Trainer

if TYPE_CHECKING:
    from edge_client.predictor import Predictor
    from edge_client.secagg_session import DeviceSecAgg

__all__ = ["ClientConfig", "ClientStats", "EdgeClient"]
log = logging.getLogger(__name__)


class EdgeClient:
    """Embeds in a device app: give it a Trainer and the device's own data, then run()."""

    def __init__(self, config: ClientConfig, trainer: Trainer, x: np.ndarray,
                 y: np.ndarray, policy: EligibilityPolicy | None = None,
                 app_busy: Callable[[], bool] | None = None,
                 on_model: Callable[[int, dict, Weights], None] | None = None,
                 predictor: Predictor | None = None,
                 holdout: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """`predictor`: serve each global model with it (unless `on_model` is given) and
        report its drift scores in the status, against a reference of `x` kept in the
        state folder (docs/lifecycle.md, "Drift"). `holdout`: the device's held-out data
        (edge_client/holdout.py), where a canary device compares a candidate with
        production and a personalised or clustered device measures the global model
        against its own; by default a fifth of x, y chosen from the device's id."""
        self.config = config
        self.holdout = holdout
        self.policy = policy or EligibilityPolicy.from_config(config.eligibility, app_busy)
        self.trainer = trainer
        self._data = checked_local_data(x, y)  # one tuple, swapped whole by set_data
        self.events = Inbox(config.inbound_queue_bytes)  # bounded: the broker holds the rest
        self._stop = threading.Event()
        keys = load_device_keys(config.security)  # cryptography only when configured
        self.identity = keys.identity
        self.narrator = DeviceNarrator(config.device_id, config.federation,
                                       Topics(config.federation).task,
                                       no_task_warning_s=config.no_task_warning_s)
        if predictor is not None:  # a serving device: its drift reference is loaded then
            from edge_client.drift.saved import reference_for

            on_model = on_model or _served_by(predictor)
            predictor.monitor_drift(reference_for(config.state_dir, x, config.device_id))
        self.io = DeviceIO(config, trainer, self.narrator, on_model,
                           None if holdout is None else checked_local_data(*holdout))
        self.io.data = lambda: self._data
        self.disk, self.outbox = self.io.disk, self.io.outbox
        self.session = DeviceSession(config, self.narrator, keys)
        if predictor is not None:
            self.session.status.drift = predictor.drift_report
        self.topics, self.stats = self.session.topics, self.session.stats
        self.link = MqttLink(
            client_id=f"fedge-{config.federation}-dev-{config.device_id}",
            host=config.host, port=config.port, events=self.events,
            keepalive_s=config.keepalive_s,
            will=Will(self.topics.status(config.device_id), self.session.will_payload(_now())),
            tls=config.broker_auth.tls(), credentials=config.broker_auth.credentials(),
        )
        self._feed(self.io.resumed())

    @property
    def on_model(self) -> Callable[[int, dict, Weights], None] | None:
        """(version, arch, weights) of each global model, e.g. a Predictor's load."""
        return self.io.on_model

    @on_model.setter
    def on_model(self, hook: Callable[[int, dict, Weights], None] | None) -> None:
        self.io.on_model = hook

    @property
    def model_version(self) -> int | None:
        return self.session.model_version

    @property
    def model_sha256(self) -> str | None:
        """The SHA-256 of the held model's encoding, as its manifest named it."""
        model = self.session.downlink.model
        return None if model is None else model.sha256

    @property
    def task(self) -> Task | None:
        """The latest task the aggregator published."""
        return self.session.task

    @property
    def secagg(self) -> DeviceSecAgg:
        """Secure rounds and their test hooks; imported on first use."""
        return self.session.secure.device

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
                if isinstance(event, Connected):
                    self.narrator.connected(self.config.host, self.config.port)
                    self._feed(LinkUp())
                elif isinstance(event, Disconnected):
                    self.narrator.disconnected(event.reason)
                    self._feed(LinkDown(event.reason))
                elif isinstance(event, Inbound):
                    self.receive(event.topic, event.payload)
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

    def receive(self, topic: str, payload: bytes) -> None:
        """Handle one message as the broker delivered it (run() calls this for each; tests
        drive a device offline with it). No message can stop the device loop."""
        try:
            self._do(self.session.receive(topic, payload, _now()))
        except TrainerFailed:
            raise  # the app's trainer, not the message: the device cannot go on
        except RemoteProtocolError as exc:
            self.stats.bad_messages += 1
            log.warning("%s: ignored a bad message on %s: %s", self.config.device_id, topic,
                        exc.reason)
        except Exception as exc:  # our bug, not the sender's: log it and go on
            self.stats.bad_messages += 1
            log.error("%s: handling a message on %s failed: %s", self.config.device_id, topic,
                      exc, exc_info=True)

    # ------------------------------------------------------------ the session's actions
    def _feed(self, event: Event) -> None:
        self._do(self.session.handle(event, _now()))

    def _do(self, actions: list[act.Action]) -> None:
        for action in actions:
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
                    self._feed(EligibilityChecked(self._check()))
                case act.SleepUntil():
                    self.link.stop()
                case act.Wake():
                    self.link.start()
                case act.StopFit():
                    pass  # read by _should_stop, which asked
                case act.EvaluateCanary():
                    held = self.io.held_out(self._data)
                    self._feed(self.io.evaluate_canary(action, held))
                case _:
                    answer = self.io.execute(action, lambda: self._data, self._should_stop,
                                             self._stop.is_set)
                    if answer is not None:
                        self._feed(answer)

    def _check(self) -> Decision:
        return self.policy.check(time.time())

    def _should_stop(self) -> bool:
        """Checked between batches: shutting down, or the session stops the fit."""
        if self._stop.is_set():
            return True
        actions = self.session.handle(EligibilityChecked(self._check()), _now())
        self._do(actions)
        return any(isinstance(a, act.StopFit) for a in actions)


def _served_by(predictor: Predictor) -> Callable[[int, dict, Weights], None]:
    def serve(version: int, arch: dict, weights: Weights) -> None:
        predictor.load(version, arch, weights)
    return serve


def _now() -> Instant:
    return Instant(time.monotonic(), time.time())
