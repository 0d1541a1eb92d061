"""Synthetic 3-axis vibration windows from simulated rotating machines (no download).

Each window is 128 samples of an accelerometer (in g) at SAMPLE_RATE_HZ on a machine's
bearing housing, axes x, y radial and z axial, with the mean removed (as a vibration
sensor's high-pass gives). The four classes follow the textbook signatures:

- normal: a little residual 1x (shaft frequency) vibration and sensor noise;
- imbalance: a strong 1x that rotates with the shaft (x and y 90 degrees apart);
- misalignment: a strong 2x harmonic radially, and 1x and 2x in the axial direction;
- bearing_fault: an outer-race defect, impacts at the bearing's BPFO (a few times the
  shaft frequency) that each ring the housing's resonance and decay within milliseconds.

Every window draws its own shaft speed, amplitudes, phases and noise. Machines differ
the way a real fleet does: each has its own speed range, sensor gain per axis (mounting
and calibration), noise floor, housing resonance, bearing geometry and mix of
conditions, so every device holds different (non-IID) data. All randomness comes from
the numpy Generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 1000.0  # a MEMS accelerometer's output rate; 128 samples = 128 ms
WINDOW = 128
AXES = 3
CLASSES = ("normal", "imbalance", "misalignment", "bearing_fault")
IMPACT_DECAY_S = 0.003  # how fast the housing's ringing dies out after a bearing impact


@dataclass(frozen=True)
class Machine:
    """One simulated machine: what makes its windows differ from another machine's."""

    name: str
    rpm: tuple[float, float]  # shaft speed range, revolutions per minute
    gain: tuple[float, float, float]  # sensor gain per axis
    noise_g: float  # sensor noise, standard deviation in g
    resonance_hz: float  # the housing resonance that bearing impacts excite
    bpfo_ratio: float  # outer-race defect frequency / shaft frequency (bearing geometry)
    class_mix: tuple[float, float, float, float]  # share of each class in its log

    def __post_init__(self) -> None:
        if not 0 < self.rpm[0] <= self.rpm[1]:
            raise ValueError(f"{self.name}: rpm must be a range 0 < low <= high, "
                             f"not {self.rpm}")
        if len(self.class_mix) != len(CLASSES) or min(self.class_mix) < 0 \
                or not np.isclose(sum(self.class_mix), 1.0):
            raise ValueError(f"{self.name}: class_mix must be {len(CLASSES)} shares "
                             f"summing to 1, not {self.class_mix}")
        if self.resonance_hz >= SAMPLE_RATE_HZ / 2:
            raise ValueError(f"{self.name}: resonance_hz {self.resonance_hz} is above the "
                             f"Nyquist frequency {SAMPLE_RATE_HZ / 2}")


def make_fleet(count: int, rng: np.random.Generator, alpha: float = 1.0) -> list[Machine]:
    """`count` machines, each different; `alpha` is the Dirichlet concentration of their
    class mixes (small: each machine sees mostly one or two conditions)."""
    if count < 1:
        raise ValueError(f"a fleet needs at least one machine, not {count}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, not {alpha}")
    machines = []
    for i in range(count):
        centre = rng.uniform(800.0, 2800.0)  # 13 to 47 Hz shafts
        spread = rng.uniform(0.05, 0.15)
        mix = 0.04 + 0.84 * rng.dirichlet(np.full(len(CLASSES), alpha))  # every class, a bit
        machines.append(Machine(
            name=f"machine-{i}",
            rpm=(round(centre * (1 - spread), 1), round(centre * (1 + spread), 1)),
            gain=tuple(round(float(g), 3) for g in rng.uniform(0.75, 1.3, AXES)),
            noise_g=round(float(rng.uniform(0.04, 0.14)), 4),
            resonance_hz=round(float(rng.uniform(180.0, 380.0)), 1),
            bpfo_ratio=round(float(rng.uniform(3.0, 3.6)), 3),
            class_mix=tuple(float(m) for m in mix / mix.sum()),
        ))
    return machines


def windows(machine: Machine, count: int, rng: np.random.Generator,
            labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`count` windows (count, 128, 3) float32 and their class ids (count,).

    Classes are drawn from the machine's mix unless `labels` gives them (a balanced
    test set, say)."""
    if labels is None:
        labels = rng.choice(len(CLASSES), size=count, p=machine.class_mix)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (count,) or labels.min(initial=0) < 0 \
            or labels.max(initial=0) >= len(CLASSES):
        raise ValueError(f"labels must be {count} class ids in [0, {len(CLASSES)})")
    x = np.stack([_window(machine, int(c), rng) for c in labels]) if count else \
        np.zeros((0, WINDOW, AXES))
    return x.astype(np.float32), labels


def balanced_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` class ids, as even across the classes as `count` allows, shuffled."""
    return rng.permutation(np.arange(count) % len(CLASSES))


def _window(machine: Machine, label: int, rng: np.random.Generator) -> np.ndarray:
    shaft_hz = rng.uniform(*machine.rpm) / 60.0
    t = np.arange(WINDOW) / SAMPLE_RATE_HZ
    angle = 2 * np.pi * shaft_hz * t + rng.uniform(0, 2 * np.pi)  # where the window starts
    # every machine turns with a little residual imbalance
    signal = _rotating(angle, rng.uniform(0.03, 0.25), axial=0.2)
    signal += _background(t, rng)
    if CLASSES[label] == "imbalance":
        signal += _rotating(angle, rng.uniform(0.15, 1.0), axial=0.1)
    elif CLASSES[label] == "misalignment":
        signal += _rotating(2 * angle + rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.6),
                            axial=0.0)
        signal += _rotating(angle, rng.uniform(0.0, 0.25), axial=0.0)
        signal[:, 2] += rng.uniform(0.1, 0.5) * np.sin(angle + rng.uniform(0, 2 * np.pi))
        signal[:, 2] += rng.uniform(0.05, 0.4) * np.sin(2 * angle + rng.uniform(0, 2 * np.pi))
    elif CLASSES[label] == "bearing_fault":
        signal += _impacts(t, shaft_hz * machine.bpfo_ratio, machine.resonance_hz, rng)
    signal *= np.asarray(machine.gain)
    signal += machine.noise_g * rng.uniform(0.8, 1.25) * rng.standard_normal(signal.shape)
    return signal - signal.mean(axis=0)


def _rotating(angle: np.ndarray, amplitude: float, axial: float) -> np.ndarray:
    """A force turning with the shaft: x and y 90 degrees apart, `axial` of it along z."""
    return amplitude * np.stack([np.cos(angle), np.sin(angle), axial * np.sin(angle)], axis=1)


def _background(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vibration from nearby machinery: a tone of random frequency, level and direction."""
    tone = rng.uniform(0.0, 0.15) * np.sin(2 * np.pi * rng.uniform(5.0, 150.0) * t
                                          + rng.uniform(0, 2 * np.pi))
    return tone[:, None] * rng.uniform(-1.0, 1.0, AXES)


def _impacts(t: np.ndarray, rate_hz: float, resonance_hz: float,
             rng: np.random.Generator) -> np.ndarray:
    """Impacts at `rate_hz` (with a little slip), each a decaying ring at the resonance;
    strongest along y, the direction of the load."""
    period = 1.0 / rate_hz
    hits = np.arange(rng.uniform(-period, 0), t[-1], period)
    hits += rng.normal(0, 0.01 * period, hits.shape)
    amplitude = rng.uniform(0.15, 0.9)
    ring = np.zeros_like(t)
    for hit in hits:
        since = t - hit
        after = since >= 0
        ring[after] += (amplitude * np.exp(-since[after] / IMPACT_DECAY_S)
                        * np.sin(2 * np.pi * resonance_hz * since[after]))
    return ring[:, None] * np.array([0.5, 1.0, 0.3])
