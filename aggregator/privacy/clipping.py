"""Per-update L2 clipping, fixed or adaptive (a quantile of the update norms).

Adaptive clipping after Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", https://arxiv.org/abs/1905.03871: after each version,

    C <- C * exp(-eta_C * (b - gamma))

where b is the noised share of updates with norm <= C and gamma the target quantile. The
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
              clip_lr: float, count_stddev: float, rng: np.random.Generator) -> float:
    """One geometric step of the clip towards the target quantile of the norms.

    The count is noised (std `count_stddev`) and divided by the expected cohort, as the
    update mean is, so it costs a known share of the privacy budget (see
    `PrivacyConfig.update_noise_multiplier`).
    """
    if cohort < 1:
        raise ValueError(f"the cohort must be >= 1, not {cohort}")
    share = (unclipped + rng.normal(0.0, count_stddev)) / cohort
    return float(clip * math.exp(-clip_lr * (share - target_quantile)))
