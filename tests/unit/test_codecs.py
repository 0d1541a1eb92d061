"""Update codecs end to end: config, encode/decode round trips, error feedback, accumulate."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edge_client.shared.codecs import (
    DENSE,
    CodecConfig,
    ErrorFeedback,
    accumulate,
    decode_dense,
    decode_sparse,
    encode_vector,
)
from edge_client.shared.codecs.config import QUANTIZERS, SPARSIFIERS
from edge_client.shared.codecs.pipeline import HEADER, TRAILER_SIZE
from edge_client.shared.codecs.sparsify import k_for, randk_indices
from edge_client.shared.protocol.errors import RemoteProtocolError

SEED = 2024
OVERHEAD = HEADER.size + TRAILER_SIZE


def _config(sparsify: str, quantize: str, compress: str = "zlib") -> CodecConfig:
    return CodecConfig(
        sparsify=sparsify,
        fraction=0.05,
        threshold=1.5,
        quantize=quantize,
        block_size=64,
        compress=compress,
    )


def _vector(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * rng.exponential(1.0, n)).astype(np.float32)


# ---------------------------------------------------------------- config


def test_names_are_short_and_stable():
    assert DENSE.name() == "dense-f32"
    assert CodecConfig(sparsify="topk", fraction=0.01, quantize="q4").name() == (
        "topk0.01-q4-ef-zlib"
    )
    assert CodecConfig(sparsify="threshold", threshold=0.5, error_feedback=False).name() == (
        "thr0.5-f32-zlib"
    )
    assert CodecConfig(quantize="q2", block_size=64, compress="none").name() == "dense-q2b64-ef"


def test_wire_round_trip():
    config = CodecConfig(sparsify="randk", fraction=0.25, quantize="q1", block_size=32)
    wire = config.to_wire()
    assert all(isinstance(v, (str, int, float, bool)) for v in wire.values())
    assert CodecConfig.from_wire(wire) == config
    assert CodecConfig.from_wire(DENSE.to_wire()) == DENSE


def test_from_wire_accepts_integral_numbers():
    wire = {**DENSE.to_wire(), "fraction": 1, "threshold": 0}
    config = CodecConfig.from_wire(wire)
    assert config.fraction == 1.0 and isinstance(config.fraction, float)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sparsify": "top-k"}, "sparsify"),
        ({"sparsify": ["topk"]}, "sparsify"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": math.nan}, "fraction"),
        ({"fraction": True}, "fraction"),
        ({"fraction": "0.1"}, "fraction"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"quantize": "q3"}, "quantize"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 256.0}, "block_size"),
        ({"block_size": 1 << 30}, "block_size"),
        ({"error_feedback": 1}, "error_feedback"),
        ({"compress": "gzip"}, "compress"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_from_wire_refuses_bad_fields(change, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        CodecConfig.from_wire({**DENSE.to_wire(), **change})


@pytest.mark.parametrize("raw", [None, [], "dense", {}, {"sparsify": "none"}])
def test_from_wire_refuses_non_maps_and_missing_keys(raw):
    with pytest.raises(RemoteProtocolError):
        CodecConfig.from_wire(raw)


def test_post_init_raises_value_error_for_our_own_misuse():
    with pytest.raises(ValueError, match="quantize"):
        CodecConfig(quantize="int8")
    with pytest.raises(ValueError, match="fraction"):
        CodecConfig(sparsify="topk", fraction=0)


# ---------------------------------------------------------------- round trips

COMBINATIONS = list(itertools.product(SPARSIFIERS, QUANTIZERS, ("none", "zlib")))


@pytest.mark.parametrize(("sparsify", "quantize", "compress"), COMBINATIONS)
def test_decode_returns_exactly_what_encode_says_it_sent(sparsify, quantize, compress):
    n = 1001  # not a multiple of the block size or of 8
    config = _config(sparsify, quantize, compress)
    v = _vector(n)
    encoded = encode_vector(v, config, SEED, np.random.default_rng(1))
    assert encoded.sent.dtype == np.float32 and encoded.sent.shape == (n,)
    np.testing.assert_array_equal(decode_dense(encoded.blob, config, n, SEED), encoded.sent)
    idx, values = decode_sparse(encoded.blob, config, n, SEED)
    assert idx.dtype == np.int64 and values.dtype == np.float32
    assert (np.diff(idx) > 0).all() and (idx.shape[0] == 0 or 0 <= idx[0] <= idx[-1] < n)
    np.testing.assert_array_equal(encoded.sent[idx], values)
    unsent = np.ones(n, dtype=bool)
    unsent[idx] = False
    assert not encoded.sent[unsent].any()


@pytest.mark.parametrize("sparsify", SPARSIFIERS)
def test_f32_is_lossless_on_the_kept_coordinates(sparsify):
    n = 1001
    config = _config(sparsify, "f32")
    v = _vector(n)
    encoded = encode_vector(v, config, SEED, np.random.default_rng(1))
    idx, values = decode_sparse(encoded.blob, config, n, SEED)
    np.testing.assert_array_equal(values, v[idx])
    if sparsify == "none":
        np.testing.assert_array_equal(encoded.sent, v)


def test_f16_within_half_precision():
    v = _vector(1001)
    config = _config("none", "f16")
    sent = encode_vector(v, config, SEED, np.random.default_rng(1)).sent
    # round to nearest: relative error <= 2**-11, absolute <= 2**-25 among subnormals
    np.testing.assert_allclose(sent, v, rtol=2**-11, atol=2**-24)


def test_f16_clips_instead_of_sending_infinity():
    v = np.array([1e6, -1e6, 1.0], dtype=np.float32)
    config = _config("none", "f16")
    sent = encode_vector(v, config, SEED, np.random.default_rng(1)).sent
    np.testing.assert_array_equal(sent, [65504.0, -65504.0, 1.0])


def test_topk_sends_the_largest_magnitudes():
    n = 1000
    v = _vector(n)
    config = _config("topk", "f32")
    idx, _ = decode_sparse(
        encode_vector(v, config, SEED, np.random.default_rng()).blob, config, n, SEED
    )
    k = k_for(n, config.fraction)
    assert idx.shape == (k,)
    assert np.abs(v[idx]).min() >= np.sort(np.abs(v))[-k]


def test_randk_and_dense_send_no_indices():
    n = 1000
    v = _vector(n)
    randk = _config("randk", "f32", compress="none")
    blob = encode_vector(v, randk, SEED, np.random.default_rng()).blob
    k = k_for(n, randk.fraction)
    assert len(blob) == OVERHEAD + 4 * k
    idx, _ = decode_sparse(blob, randk, n, SEED)
    np.testing.assert_array_equal(idx, randk_indices(n, k, SEED))
    assert len(encode_vector(v, DENSE, SEED, np.random.default_rng()).blob) == OVERHEAD + 4 * n


@pytest.mark.parametrize(("sparsify", "quantize"), list(itertools.product(SPARSIFIERS, QUANTIZERS)))
def test_all_zero_update(sparsify, quantize):
    config = _config(sparsify, quantize)
    encoded = encode_vector(np.zeros(500, np.float32), config, SEED, np.random.default_rng())
    assert not encoded.sent.any()
    assert not decode_dense(encoded.blob, config, 500, SEED).any()


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("sparsify", SPARSIFIERS)
def test_tiny_vectors(n, sparsify):
    config = _config(sparsify, "q4")
    v = np.arange(1, n + 1, dtype=np.float32)
    encoded = encode_vector(v, config, SEED, np.random.default_rng())
    np.testing.assert_array_equal(decode_dense(encoded.blob, config, n, SEED), encoded.sent)


def test_decoder_refuses_another_seed_config_or_length():
    v = _vector(300)
    config = _config("randk", "q8")
    blob = encode_vector(v, config, SEED, np.random.default_rng()).blob
    with pytest.raises(RemoteProtocolError, match="seed"):
        decode_dense(blob, config, 300, SEED + 1)
    with pytest.raises(RemoteProtocolError, match="codec"):
        decode_dense(blob, _config("randk", "q4"), 300, SEED)
    with pytest.raises(RemoteProtocolError, match="length"):
        decode_dense(blob, config, 301, SEED)


def test_encode_refuses_our_own_misuse():
    rng = np.random.default_rng()
    with pytest.raises(ValueError):
        encode_vector(np.array([1.0, np.nan], np.float32), DENSE, SEED, rng)
    with pytest.raises(ValueError):
        encode_vector(np.ones((2, 2), np.float32), DENSE, SEED, rng)
    with pytest.raises(ValueError):
        encode_vector(np.ones(2, np.float32), DENSE, -1, rng)


# ---------------------------------------------------------------- error feedback


def test_residual_is_what_was_not_sent():
    n = 2000
    config = _config("topk", "q4")
    feedback = ErrorFeedback(n)
    rng = np.random.default_rng(5)
    for step in range(3):
        compensated = feedback.compensate(_vector(n, seed=step))
        encoded = encode_vector(compensated, config, SEED, rng)
        feedback.record(compensated, encoded.sent)
        assert feedback.residual.dtype == np.float32
        np.testing.assert_array_equal(feedback.residual, compensated - encoded.sent)


def test_error_feedback_conserves_the_sum_of_updates():
    n, steps = 2000, 60
    config = _config("topk", "q2")
    feedback = ErrorFeedback(n)
    rng = np.random.default_rng(6)
    total_updates = np.zeros(n)
    total_sent = np.zeros(n)
    for step in range(steps):
        update = _vector(n, seed=100 + step)
        compensated = feedback.compensate(update)
        encoded = encode_vector(compensated, config, SEED + step, rng)
        feedback.record(compensated, encoded.sent)
        total_updates += update
        total_sent += encoded.sent
    # equal up to float32 rounding in compensate/record, about 1e-7 per step and coordinate
    np.testing.assert_allclose(total_sent + feedback.residual, total_updates, atol=1e-4)
    assert np.count_nonzero(total_sent) > 0.9 * n  # no coordinate starves for ever


def test_residual_survives_storage():
    feedback = ErrorFeedback(10)
    feedback.residual = np.linspace(-1, 1, 10, dtype=np.float32)
    back = ErrorFeedback.from_bytes(feedback.to_bytes(), 10)
    np.testing.assert_array_equal(back.residual, feedback.residual)
    assert back.residual.flags.writeable


def test_residual_storage_refuses_wrong_size_and_damage():
    data = ErrorFeedback(10).to_bytes()
    with pytest.raises(ValueError, match="bytes"):
        ErrorFeedback.from_bytes(data, 11)
    with pytest.raises(ValueError, match="bytes"):
        ErrorFeedback.from_bytes(data[:-1], 10)
    damaged = bytearray(data)
    damaged[5] ^= 0x40
    with pytest.raises(ValueError, match="checksum"):
        ErrorFeedback.from_bytes(bytes(damaged), 10)


def test_error_feedback_refuses_wrong_shapes():
    feedback = ErrorFeedback(4)
    with pytest.raises(ValueError):
        feedback.compensate(np.zeros(5, np.float32))


# ---------------------------------------------------------------- accumulate


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sparsify", SPARSIFIERS)
def test_accumulate_equals_the_dense_weighted_sum(sparsify, dtype):
    n = 777
    config = _config(sparsify, "q8")
    rng = np.random.default_rng(9)
    out = np.zeros(n, dtype=dtype)
    expected = np.zeros(n, dtype=dtype)
    for device, weight in enumerate([0.5, 2.0, 1.25]):
        blob = encode_vector(_vector(n, seed=device), config, SEED + device, rng).blob
        accumulate(out, blob, config, SEED + device, weight)
        expected += weight * decode_dense(blob, config, n, SEED + device).astype(dtype)
    np.testing.assert_array_equal(out, expected)


def test_accumulate_checks_the_accumulator():
    blob = encode_vector(np.ones(4, np.float32), DENSE, SEED, np.random.default_rng()).blob
    with pytest.raises(ValueError):
        accumulate(np.zeros(4, np.int64), blob, DENSE, SEED, 1.0)
    with pytest.raises(RemoteProtocolError):
        accumulate(np.zeros(5), blob, DENSE, SEED, 1.0)


# ---------------------------------------------------------------- size


def test_topk1pct_q4_zlib_is_over_100x_smaller_than_dense_f32():
    """n = 99,985: about 1.7 kB against 400 kB, roughly 235x (measured when written)."""
    n = 99_985
    config = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4", compress="zlib")
    v = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    blob = encode_vector(v, config, SEED, np.random.default_rng(1)).blob
    assert 100 * len(blob) <= 4 * n, f"ratio only {4 * n / len(blob):.0f}x"
