"""Which coordinates of an update are sent: the largest, a seeded random set, or a threshold.

Every function returns sorted unique int64 indices, the form `index_coding` expects.
"""

from __future__ import annotations

import numpy as np


def k_for(n: int, fraction: float) -> int:
    """How many of `n` coordinates a fraction keeps; at least one so a step is never empty.

    Both sides compute this from the same float, so it must be a plain deterministic
    expression (round, not ceil: 100 * 0.07 is 7.000000000000001).
    """
    if n <= 0:
        return 0
    return min(n, max(1, round(n * fraction)))


def topk_indices(v: np.ndarray, k: int) -> np.ndarray:
    """The `k` coordinates of largest magnitude; argpartition keeps this O(n), not O(n log n)."""
    n = v.shape[0]
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    chosen = np.argpartition(np.abs(v), n - k)[n - k :]
    return np.sort(chosen).astype(np.int64, copy=False)


def randk_indices(n: int, k: int, seed: int) -> np.ndarray:
    """`k` distinct coordinates drawn from `seed` alone, so the receiver can redraw them.

    NumPy does not promise the same `Generator.choice` stream across versions; the blob
    carries a checksum of these indices so a mismatch is refused, not silently misread.
    """
    if k <= 0 or n <= 0:
        return np.empty(0, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n, size=min(k, n), replace=False)
    return np.sort(chosen).astype(np.int64, copy=False)


def threshold_indices(v: np.ndarray, t: float) -> np.ndarray:
    """Coordinates with |v| >= t: the count follows the update instead of a fixed budget."""
    return np.flatnonzero(np.abs(v) >= t).astype(np.int64, copy=False)
