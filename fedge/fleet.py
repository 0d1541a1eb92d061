"""The demo's simulated devices: fake /sys and /proc trees that follow a profile.

Each device's eligibility policy reads its own fake tree with the real probes, so the
demo exercises the same code as a Raspberry Pi does; only the files are invented.
A simulator thread moves simulated time forward and rewrites the trees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_client.eligibility import EligibilityConfig, EligibilityPolicy
from edge_client.training import FitResult, TrainConfig, Trainer
from fedge.profiles import FakeDeviceTree, Profile, apply, policy_for

BATCH_DELAY_S = 0.01  # the slowest device (speed 0.25) waits 3x this per batch


class SlowTrainer:
    """Makes a device `1/speed` times slower by waiting at batch boundaries."""

    def __init__(self, inner: Trainer, speed: float) -> None:
        self.inner = inner
        self.delay_s = BATCH_DELAY_S * (1.0 / speed - 1.0)

    @classmethod
    def waiting(cls, inner: Trainer, delay_s: float) -> SlowTrainer:
        """A trainer that waits `delay_s` seconds before every batch (the benchmarks)."""
        trainer = cls(inner, 1.0)
        trainer.delay_s = delay_s
        return trainer

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.inner.get_weights()

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.inner.set_weights(weights)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return self.inner.evaluate(x, y)

    def fit(self, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        def slow_stop() -> bool:
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            return should_stop() if should_stop is not None else False
        return self.inner.fit(x, y, config, should_stop=slow_stop)


class SimulatedFleet:
    """One fake tree per device, rewritten from `profile` as simulated time passes."""

    def __init__(self, profile: Profile, root: Path, devices: int,
                 hold_s: float = 1.0) -> None:
        self.profile = profile
        self.trees = [FakeDeviceTree(root / f"device-{i}" / "tree") for i in range(devices)]
        self.hold_s = hold_s
        self._started = time.monotonic()
        self.step(0.0)

    def policy(self, index: int) -> EligibilityPolicy:
        return policy_for(self.trees[index], EligibilityConfig(hold_s=self.hold_s))

    def trainer(self, index: int, inner: Trainer) -> Trainer:
        speed = self.profile.speed_factor(index)
        return inner if speed >= 1.0 else SlowTrainer(inner, speed)

    def step(self, t: float) -> None:
        for i, tree in enumerate(self.trees):
            apply(tree, self.profile.state_at(t, i))

    def run(self, stop: threading.Event, every_s: float = 0.1) -> None:
        """Simulated seconds pass as fast as wall seconds."""
        while not stop.wait(every_s):
            self.step(time.monotonic() - self._started)
