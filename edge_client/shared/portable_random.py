"""Seeded randomness for the device's everyday work without numpy.random.

numpy 2 loads `numpy.random` (about 6.7 MB of RSS and a tenth of numpy's import time) the
first time anything touches it. A device needs only two things from a generator on its
default path: a shuffle of its samples each epoch, and uniform numbers for stochastic
rounding. Both come from here, built on the stdlib's Mersenne Twister:

- `random.Random(bytes)` seeds through SHA-512 of the bytes (seeding version 2, which
  Python keeps compatible across releases), and `randbytes` yields the generator's
  32-bit words in little-endian order: the same bytes on every platform.
- `uint64(n)` reads those bytes as little-endian uint64; `random(n)` keeps their top 53
  bits as floats in [0, 1); `permutation(n)` sorts random keys (a stable sort, so even a
  tie has one answer).

What must match numpy's exact streams stays on numpy.random, imported where it is used:
random-k indices (the aggregator regenerates them from the seed), DP noise (Gaussian),
secure aggregation, and a model's initial weights (the aggregator's initial model).
"""

from __future__ import annotations

import random

import numpy as np

_SEED_TAG = b"fedge/portable_random/"


class PortableRandom:
    """A seeded generator of uint64 words, uniforms in [0, 1) and permutations.

    `PortableRandom(7, 2)` and `PortableRandom(7, 2)` give the same numbers anywhere; the
    seed is one or more non-negative integers (say a task's seed and an epoch)."""

    def __init__(self, *seed: int) -> None:
        if not seed or any(isinstance(s, bool) or not isinstance(s, int | np.integer)
                           or s < 0 for s in seed):
            raise ValueError(f"PortableRandom needs non-negative integer seeds, got {seed!r}")
        key = b"/".join(str(int(s)).encode() for s in seed)
        self._words = random.Random(_SEED_TAG + key)

    def uint64(self, count: int) -> np.ndarray:
        """`count` uniformly random uint64 values."""
        return np.frombuffer(self._words.randbytes(8 * count), dtype="<u8").astype(np.uint64)

    def random(self, count: int) -> np.ndarray:
        """`count` float64 values, uniform in [0, 1) on a grid of 2**-53."""
        return (self.uint64(count) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def permutation(self, count: int) -> np.ndarray:
        """0 .. count-1 in a random order (int64): the argsort of random keys."""
        return np.argsort(self.uint64(count), kind="stable").astype(np.int64, copy=False)
