"""The masks both ends compute: a device adds them, the server removes what is left.

y_u = x_u + PRG(b_u) + sum over neighbours v of sign(u, v) * PRG(s_uv)   (mod 2**bits)

with sign(u, v) = +1 when u < v (as strings) and -1 otherwise, so the pairwise masks of
two devices that both send their input cancel in the sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_client.shared.secagg.keys import agree, pair_mask_key, self_mask_key
from edge_client.shared.secagg.prg import expand_mask, modulus_mask

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def self_mask(seed: bytes, round_id: str, device: str, dim: int, bits: int) -> np.ndarray:
    """PRG(b_u): the mask only b_u removes."""
    return expand_mask(self_mask_key(seed, round_id, device), dim, bits)


def pair_mask(private: X25519PrivateKey, peer_public: bytes, round_id: str, me: str,
              peer: str, dim: int, bits: int) -> np.ndarray:
    """PRG(s_uv), from either end's private key and the other's public key."""
    shared = agree(private, peer_public, peer)
    return expand_mask(pair_mask_key(shared, round_id, me, peer), dim, bits)


def add_signed(total: np.ndarray, mask: np.ndarray, me: str, peer: str) -> None:
    """total += sign(me, peer) * mask, in place, mod 2**64 (reduce mod 2**bits after)."""
    if me < peer:
        total += mask
    else:
        total -= mask


def reduce(total: np.ndarray, bits: int) -> np.ndarray:
    """total mod 2**bits, in place."""
    total &= modulus_mask(bits)
    return total
