"""N device sessions and one aggregator core wired together in memory: no broker, no
thread, no sleep. One ScriptedClock drives every party; the Bus (paired_bus.py) routes
what each side publishes to the others by topic filter.

Each party is its real sans-IO core with a stand-in shell. A device is the
ScriptedDevice of session_driver.py (its eligibility answers and the fit on the real
numpy trainer, run synchronously) whose model, outbox and state files are the real
DeviceIO in its own folder, so a device restarts from what it wrote. The aggregator is
AggregatorCore on a real SQLite Store, so it restarts from its store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.core import (
    AggregatorCore,
    ClearRetained,
    LinkUp,
    Publish,
    SendAck,
    Subscribe,
    Tick,
    VersionMade,
    VersionReport,
)
from aggregator.inbound import core_event_of
from aggregator.store import Store
from aggregator.store_check import refuse_if_damaged
from edge_client.client_config import ClientConfig
from edge_client.device_io import DeviceIO
from edge_client.eligibility import EligibilityConfig
from edge_client.session import DeviceSession
from edge_client.session import actions as act
from edge_client.session import events as ev
from edge_client.shared.clusters import cluster_count
from edge_client.shared.protocol import Ack, RemoteProtocolError, TrainConfig, decode
from edge_client.shared.protocol.chunking import decode_chunk
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.transport import Inbound
from edge_client.training import mlp_trainer
from tests.unit.paired_bus import Bus, Message
from tests.unit.scripted_clock import ScriptedClock
from tests.unit.session_driver import ScriptedDevice

FED = "paired"
AGGREGATOR = "aggregator"
SIZES = [16, 32, 4]  # 676 floats: a model is a few 1 KiB chunks


def initial_weights(seed: int = 0) -> Weights:
    return mlp_trainer(SIZES, seed=seed).get_weights()


def device_data(index: int, samples: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A device's own samples of one shared task (a fixed linear teacher)."""
    teacher = np.random.default_rng(7).normal(size=(SIZES[0], SIZES[-1]))
    x = np.random.default_rng(100 + index).normal(size=(samples, SIZES[0])).astype(np.float32)
    return x, np.argmax(x @ teacher, axis=1)


class PairedDevice(ScriptedDevice):
    """A device session whose shell publishes on the bus and keeps its disk in `folder`."""

    def __init__(self, bus: Bus, clock: ScriptedClock, folder: Path, index: int,
                 **settings: Any) -> None:
        cfg = ClientConfig(**{"device_id": f"dev-{index}", "federation": FED,
                              "state_dir": folder,
                              "eligibility": EligibilityConfig(enabled=False), **settings})
        super().__init__(cfg, mlp_trainer(SIZES, seed=1), clock=clock)
        self.bus = bus
        self.name = cfg.device_id
        self.x, self.y = device_data(index)
        self.boots = 0
        self.stored: list[str] = []  # nonces written to the outbox, over every boot
        self.acks: list[Ack] = []  # every ack delivered (a resend's second ack too)
        self.fits: list[str] = []  # the task of every fit started
        self.served: list[int] = []  # every version handed to the app (its on_model)
        self.bad_messages = 0
        self.boot()

    def boot(self) -> None:
        """Start as EdgeClient does: read back the disk, then a first eligibility check.
        After a crash this is the restart: a new session and trainer, the same folder."""
        self.boots += 1
        self.trainer = mlp_trainer(SIZES, seed=1)
        self.session = DeviceSession(self.config, self.narrator,
                                     session_id=f"{self.name}-boot-{self.boots}")
        self.io = DeviceIO(self.config, self.trainer, self.narrator,
                           lambda version, arch, weights: self.served.append(version))
        self.io.data = lambda: (self.x, self.y)
        self.feed(self.io.resumed())
        self.feed(ev.EligibilityChecked(self.decision))

    # ------------------------------------------------------------ the link
    def connect(self) -> None:
        status = self.topics.status(self.name)
        self.bus.connect(self.name, will=(status, self.session.will_payload(self.now)))
        self.feed(ev.LinkUp())

    def disconnect(self, clean: bool = True) -> None:
        self.bus.disconnect(self.name, clean)
        self.feed(ev.LinkDown("paired test"))

    def crash(self) -> None:
        """Power lost: the broker publishes the will; only the folder survives."""
        self.bus.disconnect(self.name, clean=False)
        self.boot()

    def deliver(self, message: Message) -> None:
        """A message as the broker hands it over; a bad one is counted, as EdgeClient does."""
        if message.topic == self.topics.ack(self.name) and message.payload:
            self.acks.append(decode(message.payload, expect=Ack))  # type: ignore[arg-type]
        try:
            self.receive(message.topic, message.payload)
        except RemoteProtocolError:
            self.bad_messages += 1

    def tick(self) -> None:
        self.feed(ev.Tick())

    # ------------------------------------------------------------ reading what happened
    def ack_statuses(self) -> list[str]:
        return [a.status for a in self.acks]

    def unacked(self) -> set[str]:
        """Updates this device wrote to its outbox and never saw acknowledged."""
        return set(self.stored) - {a.nonce for a in self.acks}

    # ------------------------------------------------------------ the shell's answers
    def _answer(self, action: act.Action) -> ev.Event | None:
        match action:
            case act.Publish(topic, payload, retain):
                self.bus.publish(self.name, topic, payload, retain)
            case act.PublishUpdate(_, topic, chunks):
                for chunk in chunks:
                    self.bus.publish(self.name, topic, chunk)
            case act.Subscribe(topic):
                self.bus.subscribe(self.name, topic)
            case act.Unsubscribe(topic):
                self.bus.unsubscribe(self.name, topic)
            case act.SleepUntil():
                self.bus.disconnect(self.name)
            case act.Wake():
                self.connect()
            case act.StartFit(task, weights) if (task.personal is not None
                                                 or cluster_count(weights)):
                self.fits.append(task.task_id)  # the device's own models: DeviceIO's fit
                return self.io.execute(action, lambda: (self.x, self.y), lambda: False,
                                       lambda: False)
            case act.StartFit(task):
                self.fits.append(task.task_id)
                return super()._answer(action)
            case act.CheckEligibility() | act.StopFit():
                return super()._answer(action)
            case act.EvaluateCanary():  # the default held-out fifth, as EdgeClient without one
                return self.io.evaluate_canary(action, self.io.held_out((self.x, self.y)))
            case _:
                answer = self.io.execute(action, lambda: (self.x, self.y), lambda: False,
                                         lambda: False)
                if isinstance(answer, ev.UpdateStored):
                    self.stored.append(answer.nonce)
                return answer
        return None


class PairedAggregator:
    """AggregatorCore on a real store, its actions carried out on the bus."""

    name = AGGREGATOR

    def __init__(self, bus: Bus, clock: ScriptedClock, config: AggregatorConfig,
                 initial: Weights) -> None:
        self.bus, self.clock, self.config, self.initial = bus, clock, config, initial
        self.versions: list[VersionReport] = []
        self.acks: list[Ack] = []  # every ack sent, over every start
        self.starts = 0
        self.running = False
        self.start()

    def start(self) -> None:
        """Open the store as the service does (refusing a damaged one) and build the core."""
        refuse_if_damaged(self.config.db_path, self.config.downlink.keep_deltas)
        self.store = Store(self.config.db_path)
        self.store.keep_sealed()
        self.store.keep_rejections(self.config.limits.rejections_per_device,
                                   self.config.limits.rejections_total)
        self.core = AggregatorCore(self.config, self.store, self.clock.at(), lambda b: b,
                                   initial_weights=self.initial)
        self.starts += 1
        self.running = True

    def connect(self) -> None:
        self.bus.connect(self.name)
        self.perform(self.core.handle(LinkUp(self.clock.at())))

    def crash(self) -> None:
        """The process dies: nothing but the store survives."""
        self.bus.disconnect(self.name, clean=False)
        self.store.close()
        self.running = False

    def deliver(self, message: Message) -> None:
        inbound = Inbound(message.topic, message.payload, message.retained)
        event = core_event_of(inbound, self.core.topics, self.clock.at)
        if event is not None:
            self.perform(self.core.handle(event))

    def tick(self) -> None:
        self.perform(self.core.handle(Tick(self.clock.at(), self.bus.connected(self.name))))

    def perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, SendAck) and action.ack is not None:
                self.acks.append(action.ack)
            if isinstance(action, Publish):
                self.bus.publish(self.name, action.topic, action.payload, action.retain)
            elif isinstance(action, ClearRetained):
                self.bus.publish(self.name, action.topic, b"", retain=True)
            elif isinstance(action, Subscribe):
                self.bus.subscribe(self.name, action.topic)
            elif isinstance(action, VersionMade):
                self.versions.append(action.report)

    @property
    def version(self) -> int:
        return self.core.state.version


class Federation:
    """One aggregator and `devices` devices on one bus and one clock.

    `aggregator` settings go to AggregatorConfig (defaults: 3 sync versions, every
    device in every round); `device` settings to each ClientConfig.
    """

    def __init__(self, folder: Path, devices: int = 3, device: dict | None = None,
                 **aggregator: Any) -> None:
        self.clock = ScriptedClock()
        self.bus = Bus(self.clock)
        settings: dict[str, Any] = {
            "federation": FED, "db_path": folder / "aggregator.sqlite3", "rounds": 3,
            "chunk_size": 1024, "train": TrainConfig(epochs=1, batch_size=8, lr=0.1),
            "sync": SyncConfig(target_updates=devices, min_fraction=1.0,
                               round_timeout_s=60)}
        config = AggregatorConfig(**{**settings, **aggregator})
        self.aggregator = PairedAggregator(self.bus, self.clock, config, initial_weights())
        self.devices = [PairedDevice(self.bus, self.clock, folder / f"dev-{i}", i,
                                     **(device or {})) for i in range(devices)]
        self.steps = 0

    def __getitem__(self, index: int) -> PairedDevice:
        return self.devices[index]

    def start(self) -> None:
        self.aggregator.connect()
        for device in self.devices:
            device.connect()
        self.pump()

    # ------------------------------------------------------------ time and messages
    def pump(self, until: Callable[[], bool] | None = None) -> bool:
        """Deliver every message due now (and what they cause); stop early once `until`
        holds, leaving the rest in flight. True when it stopped for `until`."""
        parties: dict[str, PairedDevice | PairedAggregator] = {
            d.name: d for d in self.devices}
        parties[AGGREGATOR] = self.aggregator
        for _ in range(100_000):
            if until is not None and until():
                return True
            message = self.bus.next_delivery()
            if message is None:
                return False
            parties[message.recipient].deliver(message)
        raise AssertionError("messages never settle: a delivery loop")

    def step(self, seconds: float = 1.0, until: Callable[[], bool] | None = None) -> bool:
        """Advance the clock, deliver what fell due, tick every party, deliver again."""
        self.clock.advance(seconds)
        self.steps += 1
        if self.pump(until):
            return True
        if self.aggregator.running:
            self.aggregator.tick()
        for device in self.devices:
            device.tick()
        return self.pump(until)

    def run(self, until: Callable[[], bool], step_s: float = 1.0,
            limit_s: float = 900.0) -> None:
        """Step until `until` holds, checked after every delivery; fail after `limit_s`."""
        start = self.clock.mono
        while not until():
            if self.clock.mono - start > limit_s:
                raise AssertionError(f"not reached in {limit_s:.0f} s: {self.describe()}")
            self.step(step_s, until)

    def run_to_end(self, limit_s: float = 900.0) -> None:
        """Until every device has the final model, knows training is done and has no
        update waiting for its ack, and every message has been delivered. (EdgeClient
        would stop at `finished` and keep an unacked update for its next run.)"""
        self.run(lambda: all(d.session.finished and not len(d.session.pending)
                             for d in self.devices)
                 and self.bus.in_flight() == 0, limit_s=limit_s)

    def describe(self) -> str:
        devices = ", ".join(f"{d.name}: v{d.session.model_version} acks {d.ack_statuses()}"
                            for d in self.devices)
        return f"aggregator at version {self.aggregator.version}; {devices}"

    # ------------------------------------------------------------ what every run must hold
    def assert_no_update_lost(self) -> None:
        """Every update a device wrote to its outbox was acked, and the outbox is empty."""
        for device in self.devices:
            assert device.unacked() == set(), f"{device.name}: never acked"
            assert device.io.outbox.nonces() == [], f"{device.name}: outbox not empty"



def first_send_of(device: str) -> Callable[[Message], bool]:
    """A fault predicate: the chunks of `device`'s first update to the aggregator, as
    first sent (each index once), not its resends or later updates."""
    transfer: list[str] = []
    taken: set[int] = set()

    def matches(message: Message) -> bool:
        if (message.recipient != AGGREGATOR
                or message.topic != f"fedge/{FED}/update/{device}"):
            return False
        chunk = decode_chunk(message.payload)
        transfer[:] = transfer or [chunk.transfer]
        if chunk.transfer != transfer[0] or chunk.index in taken:
            return False
        taken.add(chunk.index)
        return True

    return matches


def final_weights(federation: Federation) -> Weights:
    return {k: v.copy() for k, v in federation.aggregator.core.state.weights.items()}


__all__ = ["AGGREGATOR", "FED", "Federation", "PairedAggregator", "PairedDevice",
           "final_weights", "first_send_of"]
