"""Unbiased stochastic quantization to 8, 4, 2 or 1 bits with one float32 scale per block.

A block of `block_size` values uses its own max |x| as scale `s`, and 2**bits evenly
spaced levels from -s to +s (for one bit that is sign times `s`). A value between two
levels is rounded up with probability equal to its distance from the lower level over
the step, so E[dequantize(quantize(x))] == x and error feedback or averaging over
devices removes the noise rather than accumulating a bias. Codes are bit-packed
little-endian (the first value in the lowest bits of the first byte).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

SUPPORTED_BITS = (1, 2, 4, 8)
_DECODE_RUN = 16384  # values dequantized at a time (rounded down to whole blocks)


class UniformSource(Protocol):
    """Where stochastic rounding draws its uniforms in [0, 1): a device's PortableRandom
    (edge_client/shared/portable_random.py), or a numpy Generator."""

    def random(self, size: int, /) -> np.ndarray: ...


def packed_size(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take once packed."""
    return (count * bits + 7) // 8


def block_count(count: int, block_size: int) -> int:
    """Number of scale blocks (the last one may be partial)."""
    return (count + block_size - 1) // block_size


def quantize(
    values: np.ndarray, bits: int, block_size: int, rng: UniformSource
) -> tuple[bytes, np.ndarray]:
    """Stochastically round `values` to packed `bits`-bit codes plus per-block float32 scales."""
    _check(bits, block_size)
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    scales = block_scales(x, block_size)
    s = _per_value(scales, block_size, x.shape[0])
    top = (1 << bits) - 1
    ratio = np.divide(x, s, out=np.zeros_like(s), where=s > 0)  # in [-1, 1]
    level = (ratio + 1.0) * (top / 2.0)  # in [0, top]
    low = np.floor(level)
    codes = low + (rng.random(x.shape[0]) < (level - low))
    return pack_codes(np.minimum(codes, top).astype(np.uint8), bits), scales


def dequantize(
    packed: bytes, scales: np.ndarray, bits: int, count: int, block_size: int
) -> np.ndarray:
    """Values from packed codes and scales; sizes must already match (the pipeline checks)."""
    _check(bits, block_size)
    if len(scales) != block_count(count, block_size):
        raise ValueError(f"{len(scales)} scales for {count} values in blocks of {block_size}")
    if len(packed) != packed_size(count, bits):
        raise ValueError(f"{len(packed)} packed bytes for {count} values of {bits} bits")
    all_codes = unpack_codes(packed, bits, count)
    scales = np.asarray(scales, dtype=np.float32)
    top = (1 << bits) - 1
    out = np.empty(count, dtype=np.float32)
    # s * (2 codes - top) / top, step by step in float64, a run of whole blocks at a time:
    # the same arithmetic, value by value, with float64 temporaries of _DECODE_RUN values
    # rather than two of the whole vector (a device decodes whole models this way: 1.6 MB
    # less at its peak for the demo's 100k parameters).
    run = block_size * max(1, _DECODE_RUN // block_size)
    for begin in range(0, count, run):
        end = min(count, begin + run)
        codes = all_codes[begin:end].astype(np.float64)
        codes *= 2.0
        codes -= top
        codes *= _per_value(scales[begin // block_size : block_count(end, block_size)],
                            block_size, end - begin)
        codes /= top
        out[begin:end] = codes
    return out


def block_scales(x: np.ndarray, block_size: int) -> np.ndarray:
    """Max |x| of each block as float32; zero padding of the last block cannot change it."""
    blocks = block_count(x.shape[0], block_size)
    padded = np.zeros(blocks * block_size, dtype=np.float32)
    padded[: x.shape[0]] = np.abs(x)
    return padded.reshape(blocks, block_size).max(axis=1, initial=0.0)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack uint8 codes below 2**bits into bytes, `8 // bits` codes per byte."""
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    planes = np.unpackbits(codes.reshape(-1, 1), axis=1, count=bits, bitorder="little")
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_codes(packed: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`: the first `count` codes as uint8."""
    raw = np.frombuffer(packed, dtype=np.uint8)
    if bits == 8:
        return raw[:count].copy()
    flat = np.unpackbits(raw, count=count * bits, bitorder="little")
    codes = np.packbits(flat.reshape(count, bits), axis=1, bitorder="little")
    return codes.reshape(count)


def _per_value(scales: np.ndarray, block_size: int, count: int) -> np.ndarray:
    """Each block's scale repeated over its values, as float64 (count values in all)."""
    repeats = np.full(len(scales), block_size)
    if len(scales):
        repeats[-1] = count - block_size * (len(scales) - 1)
    return np.repeat(scales.astype(np.float64), repeats)


def _check(bits: int, block_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, not {bits!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, not {block_size!r}")
