"""Non-IID sensor windows with device-specific drift (made here; no download).

Six activity-like classes of 3-axis windows, each a signature of a fundamental
frequency, a harmonic and an axis pattern. Devices differ as a fleet of worn sensors
does: each has its own clock error (every frequency scaled by up to +-12%), mounting
angle (x and y rotated), per-axis gain, offset and noise floor, and a skewed mix of
classes (Dirichlet 0.3). A model for one device's drift misreads another's, and each
device sees only a few classes: FedAvg trails a model trained on the pooled data.
"""

from __future__ import annotations

import numpy as np

from edge_client.training import TrainConfig
from fedge.jobs.job import BenchJob, label_mix, split_device

WINDOW = 32
AXES = 3
CLASSES = 6
# per class: fundamental (cycles per sample), harmonic ratio and weight, axis weights
_SIGNATURES = (
    (0.060, 2.0, 0.2, (1.0, 0.3, 0.2)),
    (0.075, 2.0, 0.5, (0.8, 0.6, 0.2)),
    (0.090, 3.0, 0.3, (0.3, 1.0, 0.3)),
    (0.105, 2.0, 0.4, (0.6, 0.6, 0.6)),
    (0.120, 3.0, 0.5, (0.2, 0.4, 1.0)),
    (0.135, 2.0, 0.3, (0.9, 0.2, 0.7)),
)


def sensor_drift_job(devices: int = 8, samples: int = 300, alpha: float = 0.3,
                     seed: int = 7, test_fraction: float = 0.25) -> BenchJob:
    """`devices` devices of `samples` windows each; device i's data from its own drift."""
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(devices):
        drift = _Drift(rng)
        y = rng.choice(CLASSES, size=samples, p=label_mix(CLASSES, alpha, rng))
        data.append(split_device(drift.windows(y, rng), y, test_fraction, rng))
    arch = {"kind": "mlp", "sizes": [WINDOW * AXES, 128, 64, CLASSES]}
    train = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.5)
    return BenchJob("sensor_drift", data, arch, train, CLASSES, seed)


class _Drift:
    """One sensor's own errors, drawn once."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.clock = rng.uniform(0.88, 1.12)
        angle = rng.uniform(-np.pi / 3, np.pi / 3)
        c, s = np.cos(angle), np.sin(angle)
        self.mount = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self.gain = rng.uniform(0.7, 1.4, AXES)
        self.offset = rng.normal(0.0, 0.3, AXES)
        self.noise = rng.uniform(0.2, 0.5)

    def windows(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, WINDOW * AXES) float32: the class signatures as this sensor records them."""
        t = np.arange(WINDOW)[None, :]
        out = np.empty((len(y), WINDOW, AXES))
        for label, (f0, ratio, weight, axes) in enumerate(_SIGNATURES):
            rows = np.flatnonzero(y == label)
            if len(rows) == 0:
                continue
            f = f0 * self.clock * rng.uniform(0.95, 1.05, (len(rows), 1))
            phase = rng.uniform(0, 2 * np.pi, (len(rows), 1))
            wave = np.sin(2 * np.pi * f * t + phase) \
                + weight * np.sin(2 * np.pi * ratio * f * t + 2 * phase)
            amplitude = rng.uniform(0.7, 1.3, (len(rows), 1, 1))
            out[rows] = amplitude * wave[:, :, None] * np.asarray(axes)[None, None, :]
        out = out @ self.mount.T * self.gain + self.offset
        out += self.noise * rng.standard_normal(out.shape)
        return out.reshape(len(y), -1).astype(np.float32)
