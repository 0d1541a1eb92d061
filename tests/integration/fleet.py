"""Small federations for integration tests: real clients, a real aggregator, threads.

A test that runs a federation start to end builds it with fedge.federation.Federation
(see `federate`); tests that poke single parties (stop one, restart the aggregator,
add a hostile client) build them here and run each with a PartyThread.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aggregator.config import AggregatorConfig, AsyncConfig, SyncConfig
from aggregator.service import Aggregator
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer
from fedge.datasets import dirichlet_partition, load_digits, stratified_split
from fedge.federation import Federation, FederationResult, PartyThread

HIDDEN = 16
FEDERATION = "test"


class Digits:
    """The digits job, split once per test session."""

    def __init__(self, devices: int, seed: int = 0) -> None:
        x, y = load_digits()
        x_train, y_train, self.x_test, self.y_test = stratified_split(x, y, 0.2, seed)
        parts = dirichlet_partition(y_train, devices, 1.0, seed)
        self.shards = [(x_train[p], y_train[p]) for p in parts]
        self.sizes = [x.shape[1], HIDDEN, 10]

    def initial_weights(self) -> dict[str, np.ndarray]:
        return mlp_trainer(self.sizes, seed=0).get_weights()

    def accuracy(self, weights: dict[str, np.ndarray]) -> float:
        trainer = mlp_trainer(self.sizes)
        trainer.set_weights(weights)
        return trainer.evaluate(self.x_test, self.y_test)["accuracy"]


def aggregator_config(workdir: Path, data: Digits, **overrides) -> AggregatorConfig:
    sync = overrides.pop("sync", SyncConfig(target_updates=len(data.shards),
                                            round_timeout_s=30))
    async_ = overrides.pop("async_", AsyncConfig(buffer_size=2))
    return AggregatorConfig(federation=FEDERATION, db_path=workdir / "aggregator.sqlite3",
                            train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                            sync=sync, async_=async_, **overrides)


def make_aggregator(broker, workdir: Path, data: Digits, initial=None, arch=None,
                    **overrides) -> Aggregator:
    cfg = dataclasses.replace(aggregator_config(workdir, data, **overrides),
                              host=broker.host, port=broker.port)
    return Aggregator(cfg, initial_weights=initial or data.initial_weights(),
                      arch=arch or {"kind": "mlp", "sizes": data.sizes})


def client_config(workdir: Path, index: int, **overrides) -> ClientConfig:
    overrides.setdefault("eligibility", EligibilityConfig(enabled=False))  # real /proc varies
    return ClientConfig(device_id=f"dev-{index}", federation=FEDERATION,
                        state_dir=workdir / f"dev-{index}", **overrides)


def federate(broker, workdir: Path, data: Digits, timeout_s: float = 60,
             **overrides) -> tuple[Aggregator, list[EdgeClient], FederationResult]:
    """Every device of `data` and an aggregator configured with `overrides`, run start to
    end with fedge.federation on the test's broker."""
    with Federation(broker) as federation:
        aggregator = federation.add_aggregator(aggregator_config(workdir, data, **overrides),
                                               data.initial_weights(),
                                               {"kind": "mlp", "sizes": data.sizes})
        clients = [federation.add_device(client_config(workdir, i),
                                         mlp_trainer(data.sizes, seed=i), x, y)
                   for i, (x, y) in enumerate(data.shards)]
        result = federation.run(timeout_s)
    return aggregator, clients, result


def make_client(broker, workdir: Path, data: Digits, index: int, trainer=None,
                **overrides) -> EdgeClient:
    x, y = data.shards[index]
    cfg = dataclasses.replace(client_config(workdir, index, **overrides), host=broker.host,
                              port=broker.port)
    return EdgeClient(cfg, trainer or mlp_trainer(data.sizes, seed=index), x, y)


# A party on its own thread, as fedge.federation runs them: `join` re-raises what it
# raised, `halt` stops it. Tests that stop, restart or replace single parties use it.
Running = PartyThread


def start_all(aggregator: Aggregator, clients: list[EdgeClient]) -> list[PartyThread]:
    """The aggregator and every device, each on its own thread; aggregator first."""
    return [PartyThread(aggregator.run, "aggregator")] + [
        PartyThread(c.run, c.config.device_id) for c in clients]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
