"""PortableRandom: the device's seeded shuffles and uniforms without numpy.random."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.shared.portable_random import PortableRandom


def test_the_same_seed_gives_the_same_numbers():
    a, b = PortableRandom(7, 2), PortableRandom(7, 2)
    np.testing.assert_array_equal(a.uint64(100), b.uint64(100))
    np.testing.assert_array_equal(a.random(100), b.random(100))
    np.testing.assert_array_equal(a.permutation(100), b.permutation(100))


def test_the_stream_is_pinned():
    """The bytes come from the stdlib's Mersenne Twister seeded through SHA-512: the same
    on every platform and Python release; a change here changes every device's shuffle."""
    assert PortableRandom(0).uint64(3).tolist() == PINNED_UINT64
    assert PortableRandom(3, 1).permutation(10).tolist() == PINNED_PERMUTATION


PINNED_UINT64 = [4644005134748613519, 8555122422649490600, 6105645612430876542]
PINNED_PERMUTATION = [0, 8, 5, 7, 3, 4, 6, 1, 9, 2]


@pytest.mark.parametrize("other", [(7, 3), (8, 2), (72,), (7, 2, 0)])
def test_different_seeds_give_different_numbers(other):
    assert not np.array_equal(PortableRandom(7, 2).uint64(8), PortableRandom(*other).uint64(8))


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000])
def test_a_permutation_is_a_permutation(n):
    order = PortableRandom(n).permutation(n)
    assert order.dtype == np.int64 and order.shape == (n,)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_permutations_are_shuffled_evenly():
    """Over many seeds every value lands in every position about equally often."""
    counts = np.zeros((5, 5))
    for seed in range(4000):
        counts[np.arange(5), PortableRandom(seed).permutation(5)] += 1
    assert counts.min() > 4000 / 5 * 0.85 and counts.max() < 4000 / 5 * 1.15


def test_uniforms_lie_in_the_unit_interval_with_mean_one_half():
    u = PortableRandom(11).random(200_000)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    histogram, _ = np.histogram(u, bins=10, range=(0.0, 1.0))
    assert histogram.min() > 0.095 * len(u) and histogram.max() < 0.105 * len(u)


def test_draws_continue_the_stream():
    whole = PortableRandom(5).uint64(10)
    parts = PortableRandom(5)
    np.testing.assert_array_equal(np.concatenate([parts.uint64(4), parts.uint64(6)]), whole)


@pytest.mark.parametrize("seed", [(), (-1,), (1.5,), (True,), ("7",)])
def test_a_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match="non-negative integer"):
        PortableRandom(*seed)
