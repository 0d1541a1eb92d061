"""Codec building blocks on their own: sparsifiers, stochastic quantizer, index coding."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.shared.codecs.index_coding import (
    TAG_BITMAP,
    TAG_VARINT,
    bitmap_size,
    decode_indices,
    decode_varints,
    encode_indices,
    encode_varints,
)
from edge_client.shared.codecs.quantize import dequantize, pack_codes, quantize, unpack_codes
from edge_client.shared.codecs.sparsify import k_for, randk_indices, threshold_indices, topk_indices
from edge_client.shared.protocol.errors import RemoteProtocolError

# ---------------------------------------------------------------- sparsify


def test_k_for_rounds_and_keeps_at_least_one():
    assert k_for(0, 0.5) == 0
    assert k_for(10, 0.001) == 1
    assert k_for(100, 0.07) == 7  # ceil would give 8: 100 * 0.07 == 7.000000000000001
    assert k_for(99_985, 0.01) == 1000
    assert k_for(5, 1.0) == 5


def test_topk_picks_largest_magnitudes_sorted():
    v = np.array([0.1, -5.0, 0.0, 3.0, -0.2, 4.0], dtype=np.float32)
    idx = topk_indices(v, 3)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [1, 3, 5])
    assert topk_indices(v, 0).shape == (0,)
    np.testing.assert_array_equal(topk_indices(v, 6), np.arange(6))
    np.testing.assert_array_equal(topk_indices(v, 99), np.arange(6))


def test_randk_same_seed_same_indices_other_seed_other_indices():
    first = randk_indices(10_000, 100, seed=42)
    again = randk_indices(10_000, 100, seed=42)  # a fresh generator inside each call
    other = randk_indices(10_000, 100, seed=43)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.int64 and first.shape == (100,)
    assert (np.diff(first) > 0).all() and first[0] >= 0 and first[-1] < 10_000


def test_randk_edges():
    assert randk_indices(0, 0, 1).shape == (0,)
    np.testing.assert_array_equal(randk_indices(7, 7, 1), np.arange(7))


def test_threshold_keeps_magnitudes_at_or_above():
    v = np.array([0.5, -1.0, 0.99, 1.0, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(threshold_indices(v, 1.0), [1, 3, 4])
    np.testing.assert_array_equal(threshold_indices(v, 0.0), np.arange(5))


# ---------------------------------------------------------------- quantize


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack_every_code(bits):
    codes = np.arange(2**bits, dtype=np.uint8).repeat(3)[:-1]  # odd count: a partial byte
    packed = pack_codes(codes, bits)
    assert len(packed) == (codes.shape[0] * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(packed, bits, codes.shape[0]), codes)


def test_four_bit_packing_is_low_nibble_first():
    assert pack_codes(np.array([1, 2, 15], dtype=np.uint8), 4) == bytes([0x21, 0x0F])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantize_lands_on_a_neighbouring_level(bits):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    packed, scales = quantize(x, bits, 100, rng)
    assert scales.dtype == np.float32 and scales.shape == (10,)
    np.testing.assert_array_equal(scales, np.abs(x).reshape(10, 100).max(axis=1))
    back = dequantize(packed, scales, bits, 1000, 100)
    step = np.repeat(2 * scales / (2**bits - 1), 100)
    assert back.dtype == np.float32
    assert (np.abs(back - x) <= step * (1 + 1e-6)).all()
    assert (np.abs(back) <= np.repeat(scales, 100) * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_rounding_is_unbiased(bits):
    """Mean of 2000 draws within 5 standard errors of x, and the spread as predicted.

    A value at fraction p between levels Δ apart is Δ·Bernoulli(p) off the lower level, so
    one draw has variance Δ²p(1-p) <= Δ²/4 and the mean of D draws has standard error at
    most Δ/(2√D). 5 of those is 0.056Δ for D = 2000, ten times below the up to Δ/2 bias of
    round-to-nearest, so a biased rounding fails here. Each copy of x fills its own block
    (block_size = len(x)), so one call makes D independent draws with the same scale.
    """
    draws, width = 2000, 64
    x = np.linspace(-1.0, 0.7, width).astype(np.float32)  # scale 1; 0 and ±s inside
    x[10] = 0.0
    rng = np.random.default_rng(7)
    packed, scales = quantize(np.tile(x, draws), bits, width, rng)
    back = dequantize(packed, scales, bits, draws * width, width).reshape(draws, width)
    step = 2.0 / (2**bits - 1)
    tolerance = 5 * step / (2 * np.sqrt(draws))
    assert np.abs(back.mean(axis=0) - x).max() <= tolerance
    level = (x.astype(np.float64) + 1.0) / step
    p = level - np.floor(level)
    expected_var = step**2 * p * (1 - p)
    np.testing.assert_allclose(back.var(axis=0), expected_var, atol=0.2 * step**2 / 4)


def test_quantize_all_zero_and_empty():
    rng = np.random.default_rng(0)
    packed, scales = quantize(np.zeros(300, np.float32), 4, 256, rng)
    np.testing.assert_array_equal(scales, [0.0, 0.0])
    np.testing.assert_array_equal(dequantize(packed, scales, 4, 300, 256), np.zeros(300))
    packed, scales = quantize(np.zeros(0, np.float32), 2, 256, rng)
    assert packed == b"" and scales.shape == (0,)
    assert dequantize(packed, scales, 2, 0, 256).shape == (0,)


def test_dequantize_refuses_wrong_sizes():
    with pytest.raises(ValueError):
        dequantize(b"\x00", np.ones(1, np.float32), 4, 3, 256)
    with pytest.raises(ValueError):
        dequantize(b"\x00\x00", np.ones(2, np.float32), 4, 3, 256)


# ---------------------------------------------------------------- index coding


def test_varints_match_hand_computed_leb128():
    values = np.array([0, 1, 127, 128, 300, 2**31 - 1], dtype=np.uint64)
    expected = bytes.fromhex("00 01 7f 8001 ac02 ffffffff07")
    assert encode_varints(values) == expected
    np.testing.assert_array_equal(decode_varints(expected, 6), values.astype(np.int64))


@pytest.mark.parametrize(
    ("body", "k"),
    [
        (b"\x80\x00", 1),  # overlong: 0 in two bytes
        (b"\x81\x80\x80\x80\x80\x01", 1),  # six bytes
        (b"\x01\x81", 2),  # ends inside a varint
        (b"\x01\x02", 1),  # more varints than k
        (b"\x01", 2),  # fewer varints than k
        (b"\x80", 0),  # k = 0 but bytes present
    ],
)
def test_varint_decoder_refuses(body, k):
    with pytest.raises(RemoteProtocolError):
        decode_varints(body, k)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_index_round_trip_at_k0_and_kn(n):
    empty = encode_indices(np.empty(0, np.int64), n)
    assert decode_indices(empty, n, 0).shape == (0,)
    full = encode_indices(np.arange(n, dtype=np.int64), n)
    assert full[0] == TAG_BITMAP and len(full) == 1 + bitmap_size(n)
    np.testing.assert_array_equal(decode_indices(full, n, n), np.arange(n))


def test_k0_is_just_the_tag():
    assert encode_indices(np.empty(0, np.int64), 1000) == bytes([TAG_VARINT])


@pytest.mark.parametrize("k", [1, 5, 50, 500, 5000, 49_999, 50_000])
def test_index_round_trip_random_sets(k):
    n = 50_000
    idx = np.sort(np.random.default_rng(k).choice(n, size=k, replace=False)).astype(np.int64)
    data = encode_indices(idx, n)
    back = decode_indices(data, n, k)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, idx)


def test_bitmap_when_dense_varint_when_sparse():
    n = 100_000
    rng = np.random.default_rng(3)
    dense = np.sort(rng.choice(n, size=n // 2, replace=False)).astype(np.int64)
    sparse = np.sort(rng.choice(n, size=n // 1000, replace=False)).astype(np.int64)
    assert encode_indices(dense, n)[0] == TAG_BITMAP
    sparse_data = encode_indices(sparse, n)
    assert sparse_data[0] == TAG_VARINT
    assert len(sparse_data) < 1 + 2 * sparse.shape[0]  # gaps near 1000 take two bytes


def test_encode_indices_refuses_our_misuse():
    with pytest.raises(ValueError):
        encode_indices(np.array([3, 2]), 10)
    with pytest.raises(ValueError):
        encode_indices(np.array([1, 1]), 10)
    with pytest.raises(ValueError):
        encode_indices(np.array([10]), 10)


@pytest.mark.parametrize(
    ("data", "n", "k", "reason"),
    [
        (b"", 10, 0, "tag"),
        (b"\x07", 10, 0, "tag"),
        (b"\x00\x02\x03\x00", 10, 3, "increasing"),  # indices 2, 5, 5
        (b"\x00\x02\x03\x05", 10, 3, "range"),  # indices 2, 5, 10
        (b"\x00\x0a", 10, 1, "past"),  # a single gap of n
        (b"\x01\x01", 10, 1, "bytes"),  # bitmap one byte short
        (b"\x01\x01\x04", 10, 1, "past the end"),  # bit 10 set
        (b"\x01\x03\x00", 10, 1, "expected 1"),  # two bits for k = 1
    ],
)
def test_decode_indices_refuses(data, n, k, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_indices(data, n, k)
