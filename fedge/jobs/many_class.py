"""A many-class task with label-skewed devices (made here; no download).

40 classes, each a mixture of three clusters in a 12-dimensional latent space, seen
through one fixed random nonlinear map into 48 features, plus noise. Each device's
classes follow Dirichlet(0.1): it sees a handful of the 40, so every local model drifts
towards its own few classes and their average loses what a pooled model keeps.
"""

from __future__ import annotations

import numpy as np

from edge_client.training import TrainConfig
from fedge.jobs.job import BenchJob, label_mix, split_device

CLASSES = 40
LATENT = 12
FEATURES = 48
CLUSTERS = 3


def many_class_job(devices: int = 8, samples: int = 400, alpha: float = 0.1,
                   seed: int = 11, test_fraction: float = 0.25) -> BenchJob:
    """`devices` devices of `samples` samples each, classes skewed by Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (CLASSES, CLUSTERS, LATENT))
    mixing = rng.normal(0.0, 1.0 / np.sqrt(LATENT), (LATENT, FEATURES))
    data = []
    for _ in range(devices):
        y = rng.choice(CLASSES, size=samples, p=label_mix(CLASSES, alpha, rng))
        cluster = rng.integers(0, CLUSTERS, samples)
        latent = centres[y, cluster] + 0.45 * rng.standard_normal((samples, LATENT))
        x = np.tanh(latent @ mixing * 1.5) + 0.1 * rng.standard_normal((samples, FEATURES))
        data.append(split_device(x.astype(np.float32), y, test_fraction, rng))
    arch = {"kind": "mlp", "sizes": [FEATURES, 256, CLASSES]}
    train = TrainConfig(epochs=2, batch_size=32, lr=0.1, momentum=0.5)
    return BenchJob("many_class", data, arch, train, CLASSES, seed)
