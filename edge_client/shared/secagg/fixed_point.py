"""Float updates to integers mod 2**bits and back, so masked sums are exact.

Every device clips each value to [-clip, clip], scales it by the round's common `scale`
and rounds (stochastically, so the rounding is unbiased on average, or to nearest), so
each integer lies in [-bound, bound] with bound = floor(clip * scale). The sum of up to
`max_devices` such integers lies in [-max_devices * bound, max_devices * bound]; it is
kept mod 2**bits in two's complement, which is exact as long as that interval fits in a
signed `bits`-bit integer. The constructor checks that, so a sum can never wrap.

Quantized dense updates are the case `scale = (2**(value_bits - 1) - 1) / clip`: each
device's integer fits in `value_bits` signed bits (8 for q8), and the masked sum needs
about value_bits + log2(max_devices) bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_client.shared.secagg.prg import check_bits, modulus_mask

WORD_BITS = (8, 16, 32, 64)


@dataclass(frozen=True)
class FixedPoint:
    """A round's common encoding: clip, scale, modulus bits and how many inputs may add up."""

    clip: float
    scale: float
    bits: int
    max_devices: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive finite number, not {self.clip!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number, not {self.scale!r}")
        check_bits(self.bits)
        if self.max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, not {self.max_devices!r}")
        if not math.isfinite(self.clip * self.scale):
            raise ValueError(f"clip * scale = {self.clip} * {self.scale} is too large")
        if self.bound < 1:
            raise ValueError(f"clip * scale = {self.clip * self.scale} rounds every value to 0")
        if self.max_devices * self.bound > _signed_max(self.bits):
            raise ValueError(
                f"a sum of {self.max_devices} values up to {self.bound} could wrap mod "
                f"2**{self.bits}; use more bits (>= {bits_for(self.max_devices, self.bound)}), "
                "a smaller scale or fewer devices")

    @classmethod
    def quantized(cls, clip: float, value_bits: int, max_devices: int,
                  bits: int | None = None) -> FixedPoint:
        """`value_bits`-bit signed levels per device (q8: 8); `bits` defaults to the
        smallest word (8, 16, 32, 64) that holds the sum of `max_devices` of them."""
        if not 2 <= value_bits <= 32:
            raise ValueError(f"value_bits must be in [2, 32], not {value_bits!r}")
        bound = (1 << (value_bits - 1)) - 1
        if bits is None:
            need = bits_for(max_devices, bound)
            bits = next((w for w in WORD_BITS if w >= need), need)
        return cls(clip=clip, scale=bound / clip, bits=bits, max_devices=max_devices)

    @property
    def bound(self) -> int:
        """The largest |integer| one device can contribute."""
        return math.floor(self.clip * self.scale)

    def to_integers(self, values: np.ndarray, rng: np.random.Generator | None = None
                    ) -> np.ndarray:
        """Clip, scale and round to int64 in [-bound, bound]; stochastic when `rng` is given."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot encode NaN or infinite values")
        scaled = np.clip(v * self.scale, -self.bound, self.bound)
        if rng is None:
            return np.rint(scaled).astype(np.int64)
        low = np.floor(scaled)
        return (low + (rng.random(scaled.shape[0]) < scaled - low)).astype(np.int64)

    def to_ring(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers as uint64 residues mod 2**bits (two's complement)."""
        return np.asarray(integers, dtype=np.int64).astype(np.uint64) & modulus_mask(self.bits)

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A device's float update as the uint64 vector it feeds to secure aggregation."""
        return self.to_ring(self.to_integers(values, rng))

    def decode_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The float64 sum of `count` devices' values from their sum mod 2**bits."""
        if not 1 <= count <= self.max_devices:
            raise ValueError(f"a sum of {count} inputs is outside [1, {self.max_devices}]: "
                             "it may have wrapped")
        residues = np.asarray(total, dtype=np.uint64) & modulus_mask(self.bits)
        # two's complement: shift the sign bit of `bits` to bit 63, then shift back
        # arithmetically (no 2**bits constant, which would not fit int64 for bits = 63)
        spare = 64 - self.bits
        signed = (residues << np.uint64(spare)).astype(np.int64) >> np.int64(spare)
        return signed.astype(np.float64) / self.scale


def bits_for(max_devices: int, bound: int) -> int:
    """Fewest modulus bits that hold any sum of `max_devices` values in [-bound, bound]."""
    return (max_devices * bound).bit_length() + 1


def _signed_max(bits: int) -> int:
    return (1 << (bits - 1)) - 1
