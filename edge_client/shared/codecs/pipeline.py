"""Encode a device's update vector into one blob, and decode it on the aggregator.

Steps: pick coordinates (sparsify), turn their values into bytes (f32, f16 or packed
stochastic codes), prepend the index set when it has to travel, deflate the lot, and
frame it. Both sides pass the same `CodecConfig`, `n` and `seed`; the frame echoes them
so a mismatch is refused instead of decoded into garbage.

Blob layout, format version 1 (all integers little-endian; version 2, the lean frame
updates use, carries the same header fields in fewer bytes: frame.py):

    offset  size  field
    0       1     format version (1)
    1       1     sparsify code: index in config.SPARSIFIERS ("none", "topk", "randk", "threshold")
    2       1     quantize code: index in config.QUANTIZERS ("f32", "f16", "q8", "q4", "q2", "q1")
    3       1     compress code: index in config.COMPRESSORS ("none", "zlib")
    4       4     block_size (u32)
    8       4     n, length of the dense vector (u32)
    12      4     k, number of values sent (u32)
    16      8     seed (u64)
    24      4     randk index check: crc32 of the random-k indices as <i8 bytes, else 0
    28      4     payload length before compression (u32)
    32      ...   body: the payload, zlib-deflated when compress is "zlib"
    end-4   4     crc32 of every byte before it

Payload (uncompressed):

    index set    topk and threshold only: `index_coding.encode_indices` output (tag byte,
                 then a bitmap or LEB128 gaps); its length is payload length minus the
                 value section's. "none" sends all n values in order and "randk" redraws
                 its indices from the seed, so neither sends indices.
    values       f32: k x <f4;  f16: k x <f2 (clipped to +-65504);
                 qN: ceil(k / block_size) x <f4 scales, then ceil(k * N / 8) packed codes.

The decoder checks the crc first, then every header field against the config, `n` and
`seed`, bounds the payload length by what `n` allows, inflates at most that many bytes,
and only then builds arrays. Every refusal is a RemoteProtocolError.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from edge_client.shared.codecs.config import (
    COMPRESSORS,
    QUANT_BITS,
    QUANTIZERS,
    SPARSIFIERS,
    CodecConfig,
)
from edge_client.shared.codecs.frame import (  # noqa: F401  (re-exported)
    FORMAT_VERSION,
    HEADER,
    LEAN_FORMAT_VERSION,
    TRAILER_SIZE,
    ZLIB_LEVEL,
    Header,
    inflate,
    open_blob,
    seal,
)
from edge_client.shared.codecs.index_coding import bitmap_size, decode_indices, encode_indices
from edge_client.shared.codecs.quantize import (
    UniformSource,
    block_count,
    dequantize,
    packed_size,
    quantize,
)
from edge_client.shared.codecs.sparsify import k_for, randk_indices, threshold_indices, topk_indices
from edge_client.shared.protocol.errors import RemoteProtocolError

INDEXED = ("topk", "threshold")  # sparsifiers whose index set travels
F16_MAX = 65504.0
MAX_N = 1 << 28  # so a dense f32 payload (4n bytes) still fits the u32 length field


@dataclass(frozen=True)
class Encoded:
    """One encoded update: `blob` travels, `sent` is what the receiver will decode from it."""

    blob: bytes
    sent: np.ndarray


def encode_vector(
    v: np.ndarray, config: CodecConfig, seed: int, rng: UniformSource,
    frame: int = FORMAT_VERSION,
) -> Encoded:
    """Encode `v`; `seed` is shared with the receiver, `rng` is the sender's own randomness.
    `frame`: the blob layout (frame.py); updates use the lean one, model deltas the first,
    which every device reads."""
    v = _checked_vector(v)
    seed = _checked_seed(seed)
    n = v.shape[0]
    idx = _select(v, config, seed)
    value_bytes = _encode_values(v[idx], config, rng)
    index_bytes = encode_indices(idx, n) if config.sparsify in INDEXED else b""
    payload = index_bytes + value_bytes
    header = Header(
        version=frame,
        sparsify=SPARSIFIERS.index(config.sparsify),
        quantize=QUANTIZERS.index(config.quantize),
        compress=COMPRESSORS.index(config.compress),
        block_size=config.block_size,
        n=n,
        k=idx.shape[0],
        seed=seed,
        index_check=_index_check(idx) if config.sparsify == "randk" else 0,
        payload_len=len(payload),
    )
    blob = seal(header, payload, split=len(index_bytes))
    sent = _scatter(n, idx, _decode_values(value_bytes, config, idx.shape[0]))
    return Encoded(blob=blob, sent=sent)


def decode_sparse(
    blob: bytes, config: CodecConfig, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique int64 indices, float32 values) of a blob; RemoteProtocolError if bad."""
    n = _checked_n(n)
    seed = _checked_seed(seed)
    header, body = _open(blob, config, n, seed)
    payload = _payload(body, config, header)
    values_len = _values_size(config, header.k)
    idx = _decode_index_set(payload[: len(payload) - values_len], config, header)
    values = _decode_values(payload[len(payload) - values_len :], config, header.k)
    return idx, values


def decode_dense(blob: bytes, config: CodecConfig, n: int, seed: int) -> np.ndarray:
    """The dense float32 vector of length `n` a blob stands for (zeros where nothing was sent)."""
    idx, values = decode_sparse(blob, config, n, seed)
    return _scatter(n, idx, values)


def accumulate(out: np.ndarray, blob: bytes, config: CodecConfig, seed: int, weight: float) -> None:
    """Add `weight` times a blob's vector into `out` without building the dense vector."""
    if not isinstance(out, np.ndarray) or out.ndim != 1:
        raise ValueError("out must be a one-dimensional numpy array")
    if out.dtype not in (np.float32, np.float64):
        raise ValueError(f"out must be float32 or float64, not {out.dtype}")
    if not np.isfinite(weight):
        raise ValueError(f"weight must be finite, not {weight!r}")
    idx, values = decode_sparse(blob, config, out.shape[0], seed)
    out[idx] += np.multiply(values, weight, dtype=out.dtype)


# --- encoding -------------------------------------------------------------------------


def _checked_vector(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 1 or v.dtype.kind not in "fiu":
        raise ValueError(f"update must be a 1-D real vector, not {v.dtype} of shape {v.shape}")
    if v.shape[0] > MAX_N:
        raise ValueError(f"update has {v.shape[0]} values, more than {MAX_N}")
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise ValueError("update holds NaN or infinity (or values beyond float32)")
    return v


def _select(v: np.ndarray, config: CodecConfig, seed: int) -> np.ndarray:
    n = v.shape[0]
    if config.sparsify == "topk":
        return topk_indices(v, k_for(n, config.fraction))
    if config.sparsify == "randk":
        return randk_indices(n, k_for(n, config.fraction), seed)
    if config.sparsify == "threshold":
        return threshold_indices(v, config.threshold)
    return np.arange(n, dtype=np.int64)


def _encode_values(values: np.ndarray, config: CodecConfig, rng: UniformSource) -> bytes:
    if config.quantize == "f32":
        return values.astype("<f4").tobytes()
    if config.quantize == "f16":
        return np.clip(values, -F16_MAX, F16_MAX).astype("<f2").tobytes()
    packed, scales = quantize(values, QUANT_BITS[config.quantize], config.block_size, rng)
    return scales.astype("<f4").tobytes() + packed


def _index_check(idx: np.ndarray) -> int:
    return zlib.crc32(idx.astype("<i8").tobytes())


# --- decoding -------------------------------------------------------------------------


def _open(blob: bytes, config: CodecConfig, n: int, seed: int) -> tuple[Header, bytes]:
    """Check the frame and header; returns the header and the (possibly deflated) body."""
    header, body = open_blob(blob, seed)
    _check_header(header, config, n, seed)
    return header, body


def _check_header(header: Header, config: CodecConfig, n: int, seed: int) -> None:
    expected = (
        SPARSIFIERS.index(config.sparsify),
        QUANTIZERS.index(config.quantize),
        COMPRESSORS.index(config.compress),
        config.block_size,
    )
    got = (header.sparsify, header.quantize, header.compress, header.block_size)
    if got != expected:
        raise RemoteProtocolError(f"update blob is for another codec than {config.name()}")
    if header.n != n:
        raise RemoteProtocolError(f"update blob is for length {header.n}, expected {n}")
    if header.seed != seed:
        raise RemoteProtocolError("update blob was encoded with another seed")
    _check_count(header.k, config, n)
    if config.sparsify != "randk" and header.index_check != 0:
        raise RemoteProtocolError("update blob has an index check without random-k")
    low, high = _payload_bounds(config, n, header.k)
    if not low <= header.payload_len <= high:
        raise RemoteProtocolError(
            f"update payload of {header.payload_len} bytes is outside [{low}, {high}]"
        )


def _check_count(k: int, config: CodecConfig, n: int) -> None:
    if config.sparsify == "threshold":
        if k > n:
            raise RemoteProtocolError(f"update declares {k} values for a vector of {n}")
        return
    expected = n if config.sparsify == "none" else k_for(n, config.fraction)
    if k != expected:
        raise RemoteProtocolError(f"update declares {k} values, expected {expected}")


def _payload_bounds(config: CodecConfig, n: int, k: int) -> tuple[int, int]:
    """Smallest and largest payload a well-formed blob with these counts can have."""
    values = _values_size(config, k)
    if config.sparsify in INDEXED:
        return values + 1, values + 1 + bitmap_size(n)
    return values, values


def _values_size(config: CodecConfig, k: int) -> int:
    if config.quantize == "f32":
        return 4 * k
    if config.quantize == "f16":
        return 2 * k
    bits = QUANT_BITS[config.quantize]
    return 4 * block_count(k, config.block_size) + packed_size(k, bits)


def _payload(body: bytes, config: CodecConfig, header: Header) -> bytes:
    if config.compress == "zlib":
        return inflate(body, header.payload_len, header.version)
    if len(body) != header.payload_len:
        raise RemoteProtocolError(
            f"update payload has {len(body)} bytes, header says {header.payload_len}"
        )
    return body


def _decode_index_set(data: bytes, config: CodecConfig, header: Header) -> np.ndarray:
    if config.sparsify in INDEXED:
        return decode_indices(data, header.n, header.k)
    if config.sparsify == "randk":
        idx = randk_indices(header.n, header.k, header.seed)
        if _index_check(idx) != header.index_check:
            raise RemoteProtocolError(
                "random-k indices differ from the sender's (seed or numpy version mismatch)"
            )
        return idx
    return np.arange(header.n, dtype=np.int64)


def _decode_values(data: bytes, config: CodecConfig, k: int) -> np.ndarray:
    """Float32 values from the value section; sizes were checked, contents are checked here."""
    if config.quantize == "f32":
        values = np.frombuffer(data, dtype="<f4", count=k).astype(np.float32)
    elif config.quantize == "f16":
        values = np.frombuffer(data, dtype="<f2", count=k).astype(np.float32)
    else:
        blocks = block_count(k, config.block_size)
        scales = np.frombuffer(data, dtype="<f4", count=blocks).astype(np.float32)
        if not (np.isfinite(scales) & (scales >= 0)).all():
            raise RemoteProtocolError("update has a negative or non-finite scale")
        bits = QUANT_BITS[config.quantize]
        return dequantize(data[4 * blocks :], scales, bits, k, config.block_size)
    if not np.isfinite(values).all():
        raise RemoteProtocolError("update holds NaN or infinity")
    return values


def _scatter(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    if idx.shape[0] == n:  # indices are sorted and unique, so this is every coordinate
        return values
    dense = np.zeros(n, dtype=np.float32)
    dense[idx] = values
    return dense


# --- argument checks (our own misuse: ValueError) -------------------------------------


def _checked_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, not {type(seed).__name__}")
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), not {seed}")
    return int(seed)


def _checked_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_N:
        raise ValueError(f"n must be an int in [0, {MAX_N}], not {n!r}")
    return int(n)
