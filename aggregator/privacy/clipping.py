"""Per-update L2 clipping, fixed or adaptive (a quantile of the update norms).

Adaptive clipping after Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", https://arxiv.org/abs/1905.03871: after each version,

    C <- C * exp(-eta_C * (b - gamma))

where b is the noised share of updates with norm <= C (counted with bits centred on 0,
see `next_clip`) and gamma the target quantile. The
geometric step moves C by the same factor whether it is far too large or far too small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clipped:
    """Rows scaled to L2 norm <= bound, and each row's norm before."""

    rows: np.ndarray  # (n, d) float64
    norms: np.ndarray  # (n,)
    bound: float

    @property
    def unclipped(self) -> int:
        """How many rows were within the bound (Andrew et al.'s sum of b_i)."""
        return int(np.count_nonzero(self.norms <= self.bound))


def l2_clip(rows: np.ndarray, bound: float) -> Clipped:
    """Scale every row whose norm exceeds `bound` down to it; others stay as they are.

    The whole flattened update is one vector, so one device moves the sum by at most
    `bound` whatever it sends. Zero rows stay zero (no 0/0).
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"the clip bound must be a finite number > 0, not {bound}")
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError("need an (n, d) matrix of flat updates")
    norms = np.linalg.norm(rows, axis=1)
    scale = np.ones_like(norms)
    over = norms > bound
    scale[over] = bound / norms[over]
    return Clipped(rows * scale[:, None], norms, float(bound))


def next_clip(clip: float, unclipped: int, cohort: int, target_quantile: float,
              clip_lr: float, count_stddev: float, rng: np.random.Generator, *,
              devices: int) -> float:
    """One geometric step of the clip towards the target quantile of the norms.

    Each of the `devices` in the sum gives a bit centred on 0 (+1/2 unclipped, -1/2
    clipped), so adding or removing one device moves the sum by 1/2, the sensitivity
    `PrivacyConfig.update_noise_multiplier` pays for; a plain 0/1 count would move by 1.
    The sum is noised (std `count_stddev`), divided by the expected cohort as the update
    mean is, and shifted back by 1/2 (Andrew et al. 2021, as in TensorFlow Privacy).
    """
    if cohort < 1:
        raise ValueError(f"the cohort must be >= 1, not {cohort}")
    if not 0 <= unclipped <= devices:
        raise ValueError(f"unclipped must be in [0, devices = {devices}], not {unclipped}")
    centred = unclipped - devices / 2
    share = (centred + rng.normal(0.0, count_stddev)) / cohort + 0.5
    return float(clip * math.exp(-clip_lr * (share - target_quantile)))
