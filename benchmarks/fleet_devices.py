"""Simulated devices for benchmarks/fleet.py: hundreds of MQTT clients in one process.

    python -m benchmarks.fleet_devices SPEC.json RESULT.json

Each device has its own paho client and speaks the real protocol
(edge_client.shared.protocol): it decodes the retained manifest and task and its acks,
publishes its status after each model "install" (as a real device does), and sends its
update encoded by the real codec pipeline and split into chunks. One selector loop drives
every client of the process (loop_read / loop_write / loop_misc), so 10,000 connections
fit on a 2-core machine. No device trains or downloads the model: every device of a
process sends the same delta under its own id and task and a fresh nonce (a compressed
one encoded afresh, as its codec seed is per device and task), because the aggregator's
cost is what is measured, not the devices'.

With `sign`, updates and statuses are sealed with one key per process, printed first as
"key ed25519:..." for benchmarks/fleet.py to enrol for each of its devices.

Prints "connected N" once every client is connected and has sent its status; writes
RESULT.json when every device has seen the final task (or at the time limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import selectors
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_client.shared import paho_compat
from edge_client.shared.codecs import CodecConfig, encode_vector
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import (
    Ack,
    Invitation,
    ModelManifest,
    ProtocolError,
    Status,
    Task,
    Topics,
    Update,
    decode,
    encode,
    split,
)
from edge_client.shared.protocol.seeds import update_seed
from edge_client.shared.protocol.signing import is_signed, open_envelope, seal
from edge_client.shared.protocol.tensors import Weights, flatten_sorted
from edge_client.training import mlp_trainer

CONNECT_BATCH = 200  # clients connected between two turns of the loop
MISC_EVERY_S = 5.0  # keepalive pings and paho's housekeeping, for every client
NUM_SAMPLES = 50


@dataclass(frozen=True)
class DeviceSpec:
    """What one device process runs: devices `first` .. `first + count - 1`."""

    host: str
    port: int
    federation: str
    first: int
    count: int
    sizes: list[int]
    train_s: float = 0.0  # simulated training time before each update (jittered x0.5-1.5)
    ack_timeout_s: float = 30.0  # resend an unacknowledged update after this long
    time_limit_s: float = 600.0
    keepalive_s: int = 300
    sign: bool = False  # seal updates and statuses with one Ed25519 key for the process


@dataclass
class Outcome:
    """What the devices of one process saw, for benchmarks/fleet.py to total."""

    sent: int = 0
    resends: int = 0
    acks: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    unacked: list[tuple[str, str, str]] = field(default_factory=list)
    connect_failures: int = 0
    bad_messages: int = 0
    task_bytes: int = 0
    finished: int = 0


def device_name(index: int) -> str:
    return f"dev{index:05d}"


def delta_like(sizes: list[int]) -> Weights:
    """A small delta shaped like the demo model: the update every simulated device sends."""
    weights = mlp_trainer(sizes, seed=0).get_weights()
    rng = np.random.default_rng(1)
    return {name: (rng.standard_normal(w.shape) * 1e-3).astype(np.float32)
            for name, w in weights.items()}


class UpdateFactory:
    """Updates for any device and task from one delta, encoded by the task's codec.

    The codec's header carries a seed drawn from the task and device, so a compressed
    blob is encoded afresh for each update (about 1 ms for the demo model)."""

    def __init__(self, delta: Weights) -> None:
        self.delta = delta
        self.vector = flatten_sorted(delta)
        self._rng = np.random.default_rng(0)

    def update(self, device: str, task: Task) -> Update:
        fields: dict[str, Any] = {"tensors": self.delta}
        if task.codec is not None:
            codec = CodecConfig.from_wire(task.codec)
            blob = encode_vector(self.vector, codec, update_seed(task.task_id, device),
                                 self._rng).blob
            fields = {"tensors": {}, "codec": task.codec, "blob": blob}
        return Update(device_id=device, task_id=task.task_id, nonce=os.urandom(16).hex(),
                      base_version=task.model_version, num_samples=NUM_SAMPLES,
                      metrics={"train_loss": 0.5, "train_s": 0.0}, created_at=time.time(),
                      **fields)


def _body(payload: bytes | bytearray) -> bytes:
    data = bytes(payload)
    return open_envelope(data).body if is_signed(data) else data


@dataclass
class Pending:
    task_id: str
    nonce: str
    chunks: tuple[bytes, ...]
    sent_at: float


class Device:
    """One simulated device: its client, what it knows, and its one update in flight."""

    def __init__(self, name: str, fleet: Fleet) -> None:
        self.name = name
        self.fleet = fleet
        self.topics = fleet.topics
        self.client = paho_compat.new_client(name)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.installed: int | None = None
        self.task: Task | None = None
        self.invited_to = ""  # the task id of its latest Invitation by name
        self.answered: set[str] = set()  # task ids this device has sent an update for
        self.pending: Pending | None = None
        self.train_until: float | None = None
        self.training_for: Task | None = None
        self.connected = False
        self.done = False
        self.client.will_set(self.topics.status(name), self._status(False), qos=1,
                             retain=True)

    def _status(self, online: bool) -> bytes:
        return self.fleet.seal(encode(Status(
            device_id=self.name, online=online, eligible=True, reason="",
            model_version=self.installed, time=time.time(), session=self.fleet.session)))

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.connected = True
        for topic in (self.topics.model, self.topics.invite(self.name), self.topics.task,
                      self.topics.ack(self.name)):
            client.subscribe(topic, qos=1)
        client.publish(self.topics.status(self.name), self._status(True), qos=1, retain=True)
        if self.pending is not None:
            self._publish(self.pending.chunks)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained message
        try:
            if message.topic == self.topics.task:
                self.fleet.outcome.task_bytes = max(self.fleet.outcome.task_bytes,
                                                    len(message.payload))
                self.task = decode(_body(message.payload), expect=Task)
                self.done = self.done or self.task.done
            elif message.topic == self.topics.invite(self.name):
                self.invited_to = decode(_body(message.payload), expect=Invitation).task_id
            elif message.topic == self.topics.model:
                manifest = decode(_body(message.payload), expect=ModelManifest)
                if manifest.version != self.installed:
                    self.installed = manifest.version
                    self.client.publish(self.topics.status(self.name), self._status(True),
                                        qos=1, retain=True)
            else:
                self._on_ack(decode(_body(message.payload), expect=Ack))
        except ProtocolError:
            self.fleet.outcome.bad_messages += 1
            return
        self.consider()

    def _on_ack(self, ack: Ack) -> None:
        pending = self.pending
        if pending is None or ack.nonce != pending.nonce:
            return
        self.fleet.outcome.acks.append((self.name, pending.task_id, pending.nonce,
                                        str(ack.status), ack.reason))
        self.pending = None

    def consider(self) -> None:
        """Start "training" for the current task when invited, free and up to date."""
        task = self.task
        if (task is None or task.done or self.pending is not None or self.train_until
                is not None or task.task_id in self.answered
                or task.model_version != self.installed or not (
                    task.invites(self.name) or task.task_id == self.invited_to)):
            return
        self.answered.add(task.task_id)
        self.training_for = task
        self.train_until = time.monotonic() + self.fleet.train_time()
        self.fleet.training.add(self)

    def prepare(self) -> bool:
        """Training is over: encode the update for the task trained on (now perhaps
        stale), unless the federation has finished meanwhile. True if there is one."""
        self.train_until = None
        task, self.training_for = self.training_for, None
        if task is None or (self.task is not None and self.task.done):
            return False
        update = self.fleet.factory.update(self.name, task)
        chunks = tuple(split(self.fleet.seal(encode(update)), update.nonce, task.chunk_size))
        self.pending = Pending(task.task_id, update.nonce, chunks, time.monotonic())
        return True

    def send(self) -> None:
        """Publish the prepared update."""
        if self.pending is not None:
            self.pending.sent_at = time.monotonic()
            self.fleet.outcome.sent += 1
            self._publish(self.pending.chunks)

    def resend_if_due(self, now: float) -> None:
        pending = self.pending
        if pending is not None and self.connected and \
                now - pending.sent_at >= self.fleet.spec.ack_timeout_s:
            pending.sent_at = now
            self.fleet.outcome.resends += 1
            self._publish(pending.chunks)

    def _publish(self, chunks: tuple[bytes, ...]) -> None:
        for chunk in chunks:
            self.client.publish(self.topics.update(self.name), chunk, qos=1)
        self.fleet.wants_write.add(self)


class Fleet:
    """Every device of this process and the one loop that drives them."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.topics = Topics(spec.federation)
        self.session = os.urandom(8).hex()
        self.factory = UpdateFactory(delta_like(spec.sizes))
        self.outcome = Outcome()
        self.identity = Identity.generate() if spec.sign else None
        self.selector = selectors.DefaultSelector()
        self.devices = [Device(device_name(i), self)
                        for i in range(spec.first, spec.first + spec.count)]
        self.wants_write: set[Device] = set()
        self.training: set[Device] = set()
        self._rng = random.Random(spec.first)
        self._stop = False

    def seal(self, body: bytes) -> bytes:
        return body if self.identity is None else seal(body, self.identity)

    def train_time(self) -> float:
        return self.spec.train_s * self._rng.uniform(0.5, 1.5)

    def stop(self, *_: Any) -> None:
        self._stop = True

    def connect_all(self) -> None:
        for start in range(0, len(self.devices), CONNECT_BATCH):
            for device in self.devices[start:start + CONNECT_BATCH]:
                self._connect(device)
            self.turn(0.01)
        deadline = time.monotonic() + 120
        while not all(d.connected for d in self.devices) and time.monotonic() < deadline:
            self.turn(0.05)
        self.outcome.connect_failures += sum(not d.connected for d in self.devices)

    def _connect(self, device: Device) -> None:
        try:
            device.client.connect(self.spec.host, self.spec.port, self.spec.keepalive_s)
        except OSError:
            self.outcome.connect_failures += 1
            return
        sock = device.client.socket()
        if sock is not None:
            self.selector.register(sock, selectors.EVENT_READ, device)
        self.wants_write.add(device)

    def turn(self, timeout: float) -> None:
        """Read what arrived, write what waits, start what finished training."""
        for key, _ in self.selector.select(timeout):
            device: Device = key.data
            if device.client.loop_read(10) != mqtt.MQTT_ERR_SUCCESS:
                self._lost(device)
                continue
            self.wants_write.add(device)
        now = time.monotonic()
        # Every update due is encoded first and only then published, as the raw
        # baseline's publisher sends chunks it already holds: the devices' encoding is
        # not what the ingest rate measures.
        ready = [d for d in self.training if d.train_until is not None
                 and d.train_until <= now]
        self.training.difference_update(ready)
        for device in [d for d in ready if d.prepare()]:
            device.send()
        for device in list(self.wants_write):
            if device.client.want_write():
                device.client.loop_write()
            if not device.client.want_write():
                self.wants_write.discard(device)

    def _lost(self, device: Device) -> None:
        """The broker closed this client: count it; it is not reconnected."""
        sock = device.client.socket()
        if sock is not None and device.connected:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
        if device.connected:
            device.connected = False
            self.outcome.connect_failures += 1

    def run(self) -> Outcome:
        deadline = time.monotonic() + self.spec.time_limit_s
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stop and time.monotonic() < deadline:
            self.turn(0.02)
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                for device in self.devices:
                    device.client.loop_misc()
                    device.resend_if_due(now)
            if all(d.done and d.pending is None for d in self.devices if d.connected):
                break
        return self.finish()

    def finish(self) -> Outcome:
        outcome = self.outcome
        outcome.finished = sum(d.done for d in self.devices)
        outcome.unacked = [(d.name, d.pending.task_id, d.pending.nonce)
                           for d in self.devices if d.pending is not None]
        for device in self.devices:
            if device.connected:
                device.client.disconnect()
                device.client.loop_write()
        return outcome


def _raise_fd_limit() -> None:
    """This process holds one socket per device: take the hard limit for ourselves."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    spec = DeviceSpec(**json.loads(Path(sys.argv[1]).read_text()))
    _raise_fd_limit()
    fleet = Fleet(spec)
    signal.signal(signal.SIGTERM, fleet.stop)
    if fleet.identity is not None:
        print(f"key {fleet.identity.public_text}", flush=True)
    fleet.connect_all()
    print(f"connected {sum(d.connected for d in fleet.devices)}", flush=True)
    outcome = fleet.run()
    Path(sys.argv[2]).write_text(json.dumps(asdict(outcome)))


if __name__ == "__main__":
    main()
