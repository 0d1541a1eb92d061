"""Masks: a ChaCha20 keystream read as little-endian words, reduced mod 2**bits.

Arithmetic is on uint64 arrays, where numpy wraps mod 2**64; reducing with a bit mask
afterwards gives the result mod 2**bits for any bits <= 64. On the wire a vector takes
the smallest word (1, 2, 4 or 8 bytes) that holds `bits`.
"""

from __future__ import annotations

import numpy as np

MIN_BITS = 8
MAX_BITS = 64
_ZERO_NONCE = bytes(16)  # each key expands exactly one stream, so a fixed nonce is safe


def word_bytes(bits: int) -> int:
    """Bytes per masked value on the wire."""
    check_bits(bits)
    return next(size for size in (1, 2, 4, 8) if 8 * size >= bits)


def word_dtype(bits: int) -> np.dtype:
    return np.dtype(f"<u{word_bytes(bits)}")


def modulus_mask(bits: int) -> np.uint64:
    """2**bits - 1 as uint64: `x & modulus_mask(bits)` is x mod 2**bits."""
    check_bits(bits)
    return np.uint64((1 << bits) - 1)


def expand_mask(key: bytes, count: int, bits: int) -> np.ndarray:
    """`count` pseudorandom values in [0, 2**bits) as uint64, from a 32-byte key."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms  # only when masking

    dtype = word_dtype(bits)
    encryptor = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(count * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype).astype(np.uint64) & modulus_mask(bits)


def to_wire(values: np.ndarray, bits: int) -> bytes:
    """Values already below 2**bits as little-endian words."""
    return np.asarray(values, dtype=np.uint64).astype(word_dtype(bits)).tobytes()


def from_wire(data: bytes, bits: int) -> np.ndarray:
    """Words back to uint64; the caller has checked the length."""
    return np.frombuffer(data, dtype=word_dtype(bits)).astype(np.uint64)


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], not {bits!r}")
