"""Index sets on the wire: a bitmap when they are dense, LEB128 varints of gaps when sparse.

Layout: one tag byte, then
  TAG_VARINT: k varints, the first index then each difference to the previous one
              (so every difference after the first is >= 1);
  TAG_BITMAP: ceil(n / 8) bytes, bit i (little-endian within a byte) set when i is kept.
The encoder picks whichever body is shorter (the bitmap on a tie). Both codecs are
vectorised: loops run over the at most five bytes of a varint, never over indices.
"""

from __future__ import annotations

import numpy as np

from edge_client.shared.protocol.errors import RemoteProtocolError

TAG_VARINT = 0
TAG_BITMAP = 1
MAX_N = (1 << 31) - 1  # keeps every varint within 5 bytes and every sum of gaps in int64
MAX_VARINT_BYTES = 5


def encode_indices(idx: np.ndarray, n: int) -> bytes:
    """Encode sorted unique int64 indices below `n`; the receiver must know `n` and `k`."""
    idx = _checked(idx, n)
    gaps = np.diff(idx, prepend=0).astype(np.uint64)
    varint_size = int(varint_lengths(gaps).sum())
    if varint_size < bitmap_size(n):
        return bytes([TAG_VARINT]) + encode_varints(gaps)
    return bytes([TAG_BITMAP]) + encode_bitmap(idx, n)


def decode_indices(data: bytes, n: int, k: int) -> np.ndarray:
    """Indices from `encode_indices` output, refusing anything that is not exactly k valid ones."""
    if not 0 <= k <= n <= MAX_N:
        raise ValueError(f"need 0 <= k <= n <= {MAX_N}, got k={k}, n={n}")
    if len(data) < 1:
        raise RemoteProtocolError("index set lacks its tag byte")
    tag, body = data[0], data[1:]
    if tag == TAG_BITMAP:
        return decode_bitmap(body, n, k)
    if tag == TAG_VARINT:
        return _indices_from_gaps(decode_varints(body, k), n)
    raise RemoteProtocolError(f"unknown index coding tag {tag}")


def bitmap_size(n: int) -> int:
    """Bytes of a bitmap over `n` coordinates."""
    return (n + 7) // 8


def encode_bitmap(idx: np.ndarray, n: int) -> bytes:
    """One bit per coordinate."""
    mask = np.zeros(n, dtype=np.uint8)
    mask[idx] = 1
    return np.packbits(mask, bitorder="little").tobytes()


def decode_bitmap(body: bytes, n: int, k: int) -> np.ndarray:
    """Set bits as indices; the padding bits past `n` must be clear and exactly k bits set."""
    if len(body) != bitmap_size(n):
        raise RemoteProtocolError(f"bitmap has {len(body)} bytes, expected {bitmap_size(n)}")
    bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise RemoteProtocolError("bitmap sets bits past the end of the vector")
    idx = np.flatnonzero(bits).astype(np.int64)
    if idx.shape[0] != k:
        raise RemoteProtocolError(f"bitmap holds {idx.shape[0]} indices, expected {k}")
    return idx


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """LEB128 length of each value (values below 2**35)."""
    lengths = np.ones(values.shape[0], dtype=np.int64)
    for shift in range(7, 7 * MAX_VARINT_BYTES, 7):
        lengths += values >= (np.uint64(1) << np.uint64(shift))
    return lengths


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128 of each uint64 value (below 2**35), seven bits per byte, low bits first."""
    values = values.astype(np.uint64)
    lengths = varint_lengths(values)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(MAX_VARINT_BYTES):
        has = lengths > j
        if not has.any():
            break
        chunk = (values[has] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[has] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + j] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(body: bytes, k: int) -> np.ndarray:
    """Exactly `k` canonical LEB128 values filling `body`, as int64."""
    raw = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.shape[0] != k:
        raise RemoteProtocolError(f"index list holds {ends.shape[0]} varints, expected {k}")
    if raw.shape[0] != (int(ends[-1]) + 1 if k else 0):
        raise RemoteProtocolError("index list ends inside a varint")
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)[:k]
    lengths = ends - starts + 1
    if (lengths > MAX_VARINT_BYTES).any():
        raise RemoteProtocolError(f"a varint is longer than {MAX_VARINT_BYTES} bytes")
    if ((lengths > 1) & (raw[ends] == 0)).any():
        raise RemoteProtocolError("a varint is not in its shortest form")
    values = np.zeros(k, dtype=np.int64)
    for j in range(MAX_VARINT_BYTES):
        has = lengths > j
        values[has] |= (raw[starts[has] + j].astype(np.int64) & 0x7F) << (7 * j)
    return values


def _indices_from_gaps(gaps: np.ndarray, n: int) -> np.ndarray:
    if gaps.shape[0] == 0:
        return gaps
    if (gaps[1:] == 0).any():
        raise RemoteProtocolError("indices are not strictly increasing")
    if (gaps >= n).any():
        raise RemoteProtocolError(f"an index gap reaches past the vector length {n}")
    idx = np.cumsum(gaps)  # k gaps below n <= 2**31 each: no int64 overflow
    if idx[-1] >= n:
        raise RemoteProtocolError(f"index {int(idx[-1])} is out of range for length {n}")
    return idx


def _checked(idx: np.ndarray, n: int) -> np.ndarray:
    if not 0 <= n <= MAX_N:
        raise ValueError(f"n must be in [0, {MAX_N}], not {n}")
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.shape[0] and (idx[0] < 0 or idx[-1] >= n or (np.diff(idx) <= 0).any()):
        raise ValueError("indices must be sorted, unique and in [0, n)")
    return idx
