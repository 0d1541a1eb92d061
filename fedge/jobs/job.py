"""A benchmark job: per-device train/test arrays, a model spec and the local training.

Every job in this package is made offline by a seeded generator (nothing downloaded),
so a run repeats exactly. A job hands the federation what a real deployment has: each
device's own samples (and its own held-out samples, for per-device accuracy), the
model's arch for the existing trainers (edge_client/training/), and the gateway's test
set, which is the union of the devices' held-out samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_client.shared.protocol import Weights
from edge_client.training import NumpyTrainer, TrainConfig, build_model
from fedge.digits_job import EvaluateOnTest


@dataclass(frozen=True)
class DeviceData:
    """One device's samples: what it trains on and what it keeps back to score itself."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class BenchJob:
    """A job's data and model. Device i trains a model built from `arch` with seed
    `seed + 1 + i`; the gateway starts from (and scores with) the one seeded `seed`."""

    name: str
    devices: list[DeviceData] = field(repr=False)
    arch: dict
    train: TrainConfig  # the local training this job is tuned for
    classes: int
    seed: int

    @property
    def x_test(self) -> np.ndarray:
        return np.concatenate([d.x_test for d in self.devices])

    @property
    def y_test(self) -> np.ndarray:
        return np.concatenate([d.y_test for d in self.devices])

    @property
    def shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(d.x_train, d.y_train) for d in self.devices]

    def trainer(self, seed: int | None = None) -> NumpyTrainer:
        return NumpyTrainer(build_model(self.arch, self.seed if seed is None else seed))

    def initial_weights(self) -> Weights:
        return self.trainer().get_weights()

    def device_trainer(self, index: int) -> NumpyTrainer:
        return self.trainer(self.seed + 1 + index)

    def evaluator(self) -> EvaluateOnTest:
        return EvaluateOnTest(self.trainer(), self.x_test, self.y_test)

    def describe(self) -> dict:
        """Sizes for a benchmark's JSON."""
        return {"name": self.name, "devices": len(self.devices), "classes": self.classes,
                "train_samples": int(sum(len(d.y_train) for d in self.devices)),
                "test_samples": len(self.y_test), "arch": self.arch,
                "parameters": int(sum(w.size for w in self.initial_weights().values()))}


def centralised(job: BenchJob, epochs: int) -> dict[str, float]:
    """The ceiling: one model trained on every device's samples pooled, with the job's
    local settings for `epochs` passes, scored on the gateway's test set."""
    x = np.concatenate([d.x_train for d in job.devices])
    y = np.concatenate([d.y_train for d in job.devices])
    trainer = job.trainer()
    for epoch in range(epochs):
        config = TrainConfig(epochs=1, batch_size=job.train.batch_size, lr=job.train.lr,
                             momentum=job.train.momentum, seed=job.seed + epoch)
        trainer.fit(x, y, config)
    return trainer.evaluate(job.x_test, job.y_test)


def split_device(x: np.ndarray, y: np.ndarray, test_fraction: float,
                 rng: np.random.Generator) -> DeviceData:
    """A device's samples, shuffled and cut into train and held-out test."""
    order = rng.permutation(len(y))
    cut = max(1, round(len(y) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    return DeviceData(x[train], y[train], x[test], y[test])


def label_mix(classes: int, alpha: float, rng: np.random.Generator,
              floor: float = 0.0) -> np.ndarray:
    """A device's class shares: Dirichlet(alpha) (small alpha: a few classes dominate),
    with `floor` of every class mixed in."""
    mix = floor + (1 - floor * classes) * rng.dirichlet(np.full(classes, alpha))
    return mix / mix.sum()
