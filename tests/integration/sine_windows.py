"""A tiny two-class sensor-window job for the QAT 1D-CNN tests, made here (no download)."""

from __future__ import annotations

import numpy as np


def sine_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of (32, 2) windows: a slow and a fast sine, random phase, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = np.sin(2 * np.pi * np.where(y[:, None] == 1, 0.25, 0.05) * t + phase)
    x = np.stack([wave, -wave], axis=2) + 0.3 * rng.standard_normal((n, 32, 2))
    return x.astype(np.float32), y
