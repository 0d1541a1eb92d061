"""A DeviceSession driven in memory: a scripted clock and a stand-in shell that records
what the session asks for and answers it at once, the way EdgeClient does. No broker,
no thread, no disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_client.client import EdgeClient
from edge_client.client_config import ClientConfig
from edge_client.device_state import DeviceState
from edge_client.eligibility import Decision, EligibilityConfig
from edge_client.narration import DeviceNarrator
from edge_client.session import DeviceSession, Instant
from edge_client.session import actions as act
from edge_client.session.events import (
    EligibilityChecked,
    Event,
    FitFinished,
    ModelChunkReceived,
    ModelInstalled,
    ModelRefused,
    Tick,
    UpdateNotStored,
    UpdateStored,
)
from edge_client.session.keys import DeviceKeys
from edge_client.shared.protocol import (
    Model,
    ModelManifest,
    Task,
    Topics,
    TrainConfig,
    encode,
)
from edge_client.shared.protocol.model_transfer import package_model
from edge_client.shared.protocol.tensors import Weights
from edge_client.training import mlp_trainer
from tests.unit.scripted_clock import ScriptedClock

ELIGIBLE = Decision(True, (), {})
SIZES = [8, 6, 3]
WALL = 1.7e9  # wall time at monotonic 0


def ineligible(reason: str = "on battery") -> Decision:
    return Decision(False, (reason,), {})


def config(**overrides: object) -> ClientConfig:
    settings: dict = {"device_id": "dev-0", "eligibility": EligibilityConfig(enabled=False)}
    return ClientConfig(**{**settings, **overrides})


def task(task_id: str = "r1", version: int = 0, **fields: object) -> Task:
    base: dict = {"task_id": task_id, "mode": "sync", "round": version + 1,
                  "model_version": version, "train": TrainConfig(epochs=1, batch_size=8),
                  "invited": ("dev-0",)}
    return Task(**{**base, **fields})


def model_messages(version: int, weights: Weights, arch: dict | None = None,
                   chunk_size: int = 512) -> tuple[ModelManifest, list[bytes]]:
    return package_model(Model(version=version, tensors=weights, arch=arch or {}), chunk_size,
                         now=WALL)


class ScriptedDevice:
    """One session, its clock (`t`, monotonic seconds) and a shell in memory."""

    def __init__(self, cfg: ClientConfig | None = None, trainer: object | None = None,
                 samples: int = 40, keys: DeviceKeys | None = None,
                 clock: ScriptedClock | None = None) -> None:
        self.config = cfg or config()
        self.clock = clock or ScriptedClock(wall=WALL + 1000.0, mono=1000.0)
        self.topics = Topics(self.config.federation)
        self.narrator = DeviceNarrator(self.config.device_id, self.config.federation,
                                       self.topics.task, clock=lambda: self.t)
        self.session = DeviceSession(self.config, self.narrator, keys, session_id="run-1")
        self.trainer = trainer or mlp_trainer(SIZES, seed=1)
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(samples, SIZES[0])).astype(np.float32)
        self.y = rng.integers(0, SIZES[-1], samples)
        self.decision = ELIGIBLE
        self.between_batches: list[Decision] = []  # decisions for the next batch checks
        self.disk_full = False
        self.log: list[act.Action] = []  # every action, in order
        self.outbox: dict[str, bytes] = {}

    @property
    def t(self) -> float:
        """Monotonic seconds of this device's clock (shared in paired tests)."""
        return self.clock.mono

    @t.setter
    def t(self, value: float) -> None:
        self.clock.advance(value - self.clock.mono)

    @property
    def now(self) -> Instant:
        return self.clock.device_now()

    # ------------------------------------------------------------ driving
    def feed(self, event: Event) -> list[act.Action]:
        """Hand the session an event; the actions that follow, answers included."""
        return self.run(self.session.handle(event, self.now))

    def receive(self, topic: str, payload: bytes) -> list[act.Action]:
        return self.run(self.session.receive(topic, payload, self.now))

    def advance(self, seconds: float) -> list[act.Action]:
        self.t += seconds
        return self.feed(Tick())

    def install(self, version: int, weights: Weights) -> list[act.Action]:
        """Deliver a manifest and its chunks, as the broker would after the subscribe."""
        manifest, chunks = model_messages(version, weights)
        done = self.receive(self.topics.model, encode(manifest))
        for i, chunk in enumerate(chunks):
            done += self.feed(ModelChunkReceived(self.topics.model_chunk(version, i), chunk))
        return done

    def run(self, actions: list[act.Action]) -> list[act.Action]:
        done: list[act.Action] = []
        for action in actions:
            done.append(action)
            self.log.append(action)
            answer = self._answer(action)
            if answer is not None:
                done += self.feed(answer)
        return done

    # ------------------------------------------------------------ the shell's answers
    def _answer(self, action: act.Action) -> Event | None:
        match action:
            case act.CheckEligibility():
                return EligibilityChecked(self.decision)
            case act.InstallModel(version, tensors, _):
                try:
                    self.trainer.set_weights(tensors)
                except ValueError as exc:
                    return ModelRefused(version, str(exc))
                return ModelInstalled(version)
            case act.StartFit():
                return self._fit(action)
            case act.StoreUpdate(nonce, payload):
                if self.disk_full:
                    return UpdateNotStored(nonce, "could not write the update to the outbox")
                self.outbox[nonce] = payload
                return UpdateStored(nonce)
            case act.RemoveUpdate(nonce):
                self.outbox.pop(nonce, None)
        return None

    def _fit(self, start: act.StartFit) -> FitFinished:
        self.trainer.set_weights(start.weights)
        before = self.trainer.evaluate(self.x, self.y)

        def should_stop() -> bool:
            decision = self.between_batches.pop(0) if self.between_batches else self.decision
            actions = self.run(self.session.handle(EligibilityChecked(decision), self.now))
            return any(isinstance(a, act.StopFit) for a in actions)

        result = self.trainer.fit(self.x, self.y, start.config, should_stop=should_stop)
        return FitFinished(start.task.task_id, result, self.trainer.get_weights(), before,
                           len(self.x))

    # ------------------------------------------------------------ reading what happened
    def of(self, kind: type, actions: list[act.Action] | None = None) -> list:
        return [a for a in (self.log if actions is None else actions) if isinstance(a, kind)]

    def statuses(self, actions: list[act.Action] | None = None) -> list[act.Publish]:
        topic = self.topics.status(self.config.device_id)
        return [a for a in self.of(act.Publish, actions) if a.topic == topic]


def weights(seed: int = 0) -> Weights:
    return mlp_trainer(SIZES, seed=seed).get_weights()


# ---------------------------------------------------------------- a whole EdgeClient offline
def offline_device(folder: Path, trainer: object | None = None) -> EdgeClient:
    """An EdgeClient that holds model version 0 (read back from its state folder, as after
    a reboot) and is never connected: its updates wait in the outbox."""
    DeviceState(folder, "dev-0", 10**7).save_model(
        encode(Model(version=0, tensors=weights(0), arch={})), 0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, SIZES[0])).astype(np.float32), rng.integers(0, 3, 40)
    client = EdgeClient(config(state_dir=folder), trainer or mlp_trainer(SIZES, seed=1), x, y)
    assert client.model_version == 0
    return client


def offer(client: EdgeClient, offered: Task) -> None:
    """The task as the broker would deliver it (again, for a retained task)."""
    client.receive(client.topics.task, encode(offered))
