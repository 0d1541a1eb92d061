"""Malformed update blobs: every refusal is a RemoteProtocolError, never a crash or a hang.

Most damage is caught by the blob's crc32, so many cases here re-seal the damaged bytes
with a fresh crc, as a hostile sender would, to reach the checks behind it.
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest

from edge_client.shared.codecs import CodecConfig, decode_dense, decode_sparse, encode_vector
from edge_client.shared.codecs.pipeline import HEADER, TRAILER_SIZE
from edge_client.shared.protocol.errors import RemoteProtocolError

N = 300
SEED = 99
CONFIGS = [
    CodecConfig(sparsify="topk", fraction=0.1, quantize="q4", block_size=16),
    CodecConfig(sparsify="topk", fraction=0.1, quantize="q2", block_size=16, compress="none"),
    CodecConfig(sparsify="threshold", threshold=1.0, quantize="f16", compress="none"),
    CodecConfig(sparsify="threshold", threshold=0.2, quantize="q1", compress="none"),
    CodecConfig(sparsify="randk", fraction=0.05, quantize="f32", compress="none"),
    CodecConfig(sparsify="none", quantize="q8", block_size=32),
    CodecConfig(sparsify="none", quantize="f32", compress="none"),
]


def _seal(framed: bytes) -> bytes:
    return framed + zlib.crc32(framed).to_bytes(TRAILER_SIZE, "little")


def _unsealed(blob: bytes) -> bytes:
    return blob[:-TRAILER_SIZE]


def _blob(config: CodecConfig) -> bytes:
    v = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    return encode_vector(v, config, SEED, np.random.default_rng(1)).blob


def _header(config: CodecConfig, **fields: int) -> bytes:
    """A version-1 header for `config`, N and SEED, with `fields` overridden."""
    from edge_client.shared.codecs.config import COMPRESSORS, QUANTIZERS, SPARSIFIERS

    values = {
        "version": 1,
        "sparsify": SPARSIFIERS.index(config.sparsify),
        "quantize": QUANTIZERS.index(config.quantize),
        "compress": COMPRESSORS.index(config.compress),
        "block_size": config.block_size,
        "n": N,
        "k": 0,
        "seed": SEED,
        "index_check": 0,
        "payload_len": 0,
    }
    values.update(fields)
    return HEADER.pack(*values.values())


def _refused(blob: object, config: CodecConfig, match: str | None = None) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_sparse(blob, config, N, SEED)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name())
def test_every_truncation_is_refused(config):
    blob = _blob(config)
    for cut in range(len(blob)):
        _refused(blob[:cut], config)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name())
def test_every_resealed_truncation_is_refused(config):
    framed = _unsealed(_blob(config))
    for cut in range(len(framed)):
        _refused(_seal(framed[:cut]), config)


def test_random_bytes_and_non_bytes_are_refused():
    rng = np.random.default_rng(11)
    for _ in range(300):
        junk = rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8).tobytes()
        _refused(junk, CONFIGS[0])
        _refused(_seal(junk), CONFIGS[0])
    for thing in (None, "blob", 12, [1, 2]):
        _refused(thing, CONFIGS[0], "bytes")


def test_wrong_version_byte():
    config = CONFIGS[0]
    framed = bytearray(_unsealed(_blob(config)))
    framed[0] = 3  # 2 is the lean frame (frame.py)
    _refused(_seal(bytes(framed)), config, "version")
    _refused(bytes(framed) + _blob(config)[-TRAILER_SIZE:], config, "crc32")


def test_declared_counts_beyond_n():
    threshold = CodecConfig(sparsify="threshold", threshold=0.5, compress="none")
    _refused(_seal(_header(threshold, k=N + 1, payload_len=4 * (N + 1) + 1)), threshold, "values")
    topk = CONFIGS[0]
    _refused(_seal(_header(topk, k=N)), topk, "expected 30")
    _refused(_seal(_header(topk, n=N + 1)), topk, "length")
    big = _header(topk, k=30, payload_len=2**32 - 1)
    _refused(_seal(big + b"\x78\x9c"), topk, "outside")


def _topk_f32(indices: bytes) -> tuple[CodecConfig, bytes]:
    """A hand-made topk/f32 blob for n = 20, k = 3 with the given index section.

    The index section may be at most 1 + 3 bytes: a bitmap over 20 coordinates.
    """
    config = CodecConfig(sparsify="topk", fraction=0.15, compress="none")
    payload = indices + np.ones(3, "<f4").tobytes()
    return config, _seal(_header(config, n=20, k=3, payload_len=len(payload)) + payload)


def test_hand_made_blob_decodes():
    config, blob = _topk_f32(b"\x00\x02\x03\x01")  # varint gaps: indices 2, 5, 6
    idx, values = decode_sparse(blob, config, 20, SEED)
    np.testing.assert_array_equal(idx, [2, 5, 6])
    np.testing.assert_array_equal(values, [1, 1, 1])


@pytest.mark.parametrize(
    ("indices", "reason"),
    [
        (b"\x00\x02\x03\x00", "increasing"),  # a zero gap repeats index 5; gaps are unsigned,
        (b"\x00\x02\x00\x00", "increasing"),  # so a decrease cannot even be written
        (b"\x00\x02\x03\x0f", "range"),  # 2, 5, 20 with n = 20
        (b"\x01\x64\x01\x00", "expected 3"),  # bitmap {2, 5, 6, 8}: four indices
        (b"\x01\x64\x00\x10", "past the end"),  # bitmap {2, 5, 6, 20}
        (b"\x00\x02\x03\x01\x01", "outside"),  # longer than a bitmap could be
        (b"\x02\x02\x03\x01", "tag"),
    ],
)
def test_bad_index_sets(indices, reason):
    config, blob = _topk_f32(indices)
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_sparse(blob, config, 20, SEED)


def test_non_finite_values_and_scales():
    config, blob = _topk_f32(b"\x00\x02\x03\x01")
    framed = bytearray(_unsealed(blob))
    framed[-4:] = np.array([np.inf], "<f4").tobytes()
    with pytest.raises(RemoteProtocolError, match="infinity"):
        decode_sparse(_seal(bytes(framed)), config, 20, SEED)
    q8 = CodecConfig(sparsify="none", quantize="q8", compress="none")
    payload = np.array([-1.0], "<f4").tobytes() + bytes(N // 30)
    framed = _header(q8, n=N // 30, k=N // 30, payload_len=len(payload)) + payload
    with pytest.raises(RemoteProtocolError, match="scale"):
        decode_sparse(_seal(framed), q8, N // 30, SEED)


def test_zlib_bomb_is_cut_off_quickly():
    config = CodecConfig(sparsify="none", quantize="f32", compress="zlib")
    bomb = zlib.compress(bytes(20_000_000), 9)  # 20 MB of zeros in about 20 kB
    started = time.perf_counter()
    _refused(_seal(_header(config, k=N, payload_len=4 * N) + bomb), config, "past")
    # a declared length that only a bomb could fill is refused before inflating anything
    _refused(_seal(_header(config, k=N, payload_len=20_000_000) + bomb), config, "outside")
    assert time.perf_counter() - started < 0.5


def test_zlib_streams_that_are_short_long_or_trailed():
    config = CodecConfig(sparsify="none", quantize="f32", compress="zlib")
    head = _header(config, k=N, payload_len=4 * N)
    stream = zlib.compress(bytes(4 * N))
    _refused(_seal(head + stream[:-3]), config, "cut short")
    _refused(_seal(head + stream + b"x"), config, "after")
    _refused(_seal(head + zlib.compress(bytes(4 * N - 1))), config, "cut short")
    _refused(_seal(head + zlib.compress(bytes(4 * N + 1))), config, "past")
    _refused(_seal(head + b"not zlib at all"), config, "zlib")
    assert not decode_dense(_seal(head + stream), config, N, SEED).any()


def test_fuzzed_blobs_raise_only_remote_protocol_error():
    """4000 random mutations, half re-sealed so they get past the crc."""
    rng = np.random.default_rng(1234)
    blobs = [(config, _blob(config)) for config in CONFIGS]
    decoded = 0
    for _ in range(4000):
        config, blob = blobs[rng.integers(len(blobs))]
        framed = _mutate(bytearray(_unsealed(blob)), rng)
        candidate = _seal(framed) if rng.random() < 0.5 else framed + blob[-TRAILER_SIZE:]
        try:
            out = decode_dense(candidate, config, N, SEED)
        except RemoteProtocolError:
            continue
        decoded += 1
        assert out.dtype == np.float32 and out.shape == (N,) and np.isfinite(out).all()
    assert decoded < 4000


def _mutate(data: bytearray, rng: np.random.Generator) -> bytes:
    for _ in range(rng.integers(1, 4)):
        position = int(rng.integers(len(data) + 1))
        choice = rng.integers(5)
        if choice == 0 and position < len(data):
            data[position] ^= 1 << int(rng.integers(8))
        elif choice == 1 and position < len(data):
            data[position] = int(rng.integers(256))
        elif choice == 2:
            data[position:position] = bytes([int(rng.integers(256))])
        elif choice == 3:
            del data[position : position + int(rng.integers(1, 8))]
        elif position < len(data) - 4:
            struct.pack_into("<I", data, position, int(rng.integers(2**32)))
    return bytes(data)
