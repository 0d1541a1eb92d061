"""Many devices' updates in a burst, from one paho client, with the device's resend rule.

Each simulated device says it is online, waits for the open task, and sends one update
for it (the real chunking and envelope, no training); an update stays "in the outbox"
until an ack names its nonce, and `resend` sends those again, as a device does after its
ack timeout. Enough to drive `fedge aggregator serve` at a rate no trained fleet in a
test could reach.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from edge_client.shared.protocol import Ack, Status, Task, Topics, Update, decode, encode
from edge_client.shared.protocol.chunking import split
from tests.mqtt_helpers import close_client, paho_client, subscribe

SIZES = [4, 3]  # [model] sizes of the aggregator under test: tiny updates


class Burst:
    def __init__(self, broker, federation: str, devices: int,
                 weights: dict[str, np.ndarray]) -> None:
        self.topics = Topics(federation)
        self.devices = [f"burst-{i:05d}" for i in range(devices)]
        self.weights = weights
        self.client = paho_client(broker.host, broker.port, "burst")
        self._acks = subscribe(self.client, self.topics.ack("+"))
        self._tasks = subscribe(self.client, self.topics.task)
        self.outbox: dict[str, tuple[str, list[bytes]]] = {}  # nonce -> (device, chunks)
        self.acked: dict[str, str] = {}  # nonce -> ack status
        self._lock = threading.Lock()

    def say_online(self) -> None:
        for device in self.devices:
            status = Status(device_id=device, online=True, eligible=True, model_version=0,
                            time=time.time())
            self.client.publish(self.topics.status(device), encode(status), qos=1,
                                retain=True)

    def task(self, timeout: float = 30.0) -> Task:
        """The open task (retained), skipping cleared ones."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._tasks.get(timeout=max(0.1, deadline - time.monotonic()))
            if message.payload:
                task = decode(message.payload, expect=Task)
                if not task.done:
                    return task

    def forget_task(self) -> None:
        """Before a restart: `task()` then waits for the task published again."""
        self._tasks.drain()

    def make_updates(self, task: Task, chunk_size: int | None = None) -> None:
        for device in self.devices:
            nonce = uuid.uuid4().hex
            update = Update(device_id=device, task_id=task.task_id, nonce=nonce,
                            base_version=task.model_version, num_samples=10,
                            tensors={k: np.full_like(v, 0.01) for k, v in self.weights.items()},
                            metrics={}, created_at=time.time())
            self.outbox[nonce] = (device, split(encode(update), nonce, chunk_size)
                                  if chunk_size else split(encode(update), nonce))

    def send(self, nonces: list[str] | None = None) -> int:
        """Publish (QoS 1) every update not yet acked, or those named; how many."""
        with self._lock:
            todo = [n for n in (nonces or list(self.outbox)) if n in self.outbox]
        for nonce in todo:
            device, chunks = self.outbox[nonce]
            for chunk in chunks:
                self.client.publish(self.topics.update(device), chunk, qos=1)
        return len(todo)

    def collect(self, wait_s: float = 0.0) -> int:
        """Take the acks that came; an ack clears its update from the outbox."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                message = self._acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            ack = decode(message.payload, expect=Ack)
            with self._lock:
                self.acked[ack.nonce] = ack.status
                if ack.status in ("accepted", "duplicate", "late"):
                    self.outbox.pop(ack.nonce, None)
        return len(self.acked)

    def until_all_acked(self, timeout: float, resend_s: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        resend_at = time.monotonic() + resend_s
        while self.outbox and time.monotonic() < deadline:
            self.collect(0.2)
            if self.outbox and time.monotonic() >= resend_at:
                self.send()
                resend_at = time.monotonic() + resend_s
        if self.outbox:
            raise AssertionError(f"{len(self.outbox)} of {len(self.devices)} updates were "
                                 f"never acked; acks: {sorted(set(self.acked.values()))}")

    def close(self) -> None:
        close_client(self.client)


@contextmanager
def serving_burst(broker, config: AggregatorConfig, devices: int,
                  weights: dict[str, np.ndarray]) -> Iterator[tuple[Aggregator, Burst]]:
    """An aggregator serving `config` on its own thread, and a burst of `devices` to
    drive it; both stopped on the way out."""
    agg = Aggregator(config, initial_weights=weights)
    stop = threading.Event()
    serving = threading.Thread(target=agg.run, args=(stop, False), daemon=True)
    burst = Burst(broker, config.federation, devices, weights)
    serving.start()
    try:
        yield agg, burst
    finally:
        stop.set()
        serving.join(30)
        burst.close()
