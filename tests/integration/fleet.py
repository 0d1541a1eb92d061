"""Small federations for integration tests: real clients, a real aggregator, threads."""

from __future__ import annotations

import threading
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


def make_aggregator(broker, workdir: Path, data: Digits, initial=None, arch=None,
                    **overrides) -> Aggregator:
    sync = overrides.pop("sync", SyncConfig(target_updates=len(data.shards),
                                            round_timeout_s=30))
    async_ = overrides.pop("async_", AsyncConfig(buffer_size=2))
    cfg = AggregatorConfig(federation=FEDERATION, host=broker.host, port=broker.port,
                           db_path=workdir / "aggregator.sqlite3",
                           train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                           sync=sync, async_=async_, **overrides)
    return Aggregator(cfg, initial_weights=initial or data.initial_weights(),
                      arch=arch or {"kind": "mlp", "sizes": data.sizes})


def make_client(broker, workdir: Path, data: Digits, index: int, trainer=None,
                **overrides) -> EdgeClient:
    x, y = data.shards[index]
    overrides.setdefault("eligibility", EligibilityConfig(enabled=False))  # real /proc varies
    cfg = ClientConfig(device_id=f"dev-{index}", federation=FEDERATION, host=broker.host,
                       port=broker.port, state_dir=workdir / f"dev-{index}", **overrides)
    return EdgeClient(cfg, trainer or mlp_trainer(data.sizes, seed=index), x, y)


class Running:
    """Runs `target(stop_event)` on a thread; `join` re-raises what it raised."""

    def __init__(self, target: Callable[[threading.Event], None], name: str) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), name=name,
                                       daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[threading.Event], None]) -> None:
        try:
            target(self.stop)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.thread.is_alive(), f"{self.thread.name} still running after {timeout}s"

    def halt(self, timeout: float = 10) -> None:
        self.stop.set()
        self.join(timeout)


def start_all(aggregator: Aggregator, clients: list[EdgeClient]) -> list[Running]:
    """The aggregator and every device, each on its own thread; aggregator first."""
    return [Running(aggregator.run, "aggregator")] + [
        Running(c.run, c.config.device_id) for c in clients]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
