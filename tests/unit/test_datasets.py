"""Tests for the demo data helpers: loading, stratified split, Dirichlet partition."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.datasets import dirichlet_partition, load_digits, stratified_split


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_load_digits_is_scaled_float32():
    pytest.importorskip("sklearn")
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_stratified_split_sizes_and_class_proportions():
    y = _labels([100, 50, 30])
    x = np.arange(len(y), dtype=np.float32)[:, None]
    x_train, y_train, x_test, y_test = stratified_split(x, y, 0.2, seed=0)
    assert len(x_test) == 20 + 10 + 6 and len(x_train) == 180 - 36
    assert np.bincount(y_test).tolist() == [20, 10, 6]
    assert np.bincount(y_train).tolist() == [80, 40, 24]
    # rows stay paired with their labels and no row is in both sets
    np.testing.assert_array_equal(y[x_train[:, 0].astype(int)], y_train)
    np.testing.assert_array_equal(y[x_test[:, 0].astype(int)], y_test)
    assert not set(x_train[:, 0]) & set(x_test[:, 0])


def test_stratified_split_is_deterministic_for_a_seed():
    y = _labels([40, 40])
    x = np.arange(len(y), dtype=np.float32)[:, None]
    first = stratified_split(x, y, 0.25, seed=5)
    again = stratified_split(x, y, 0.25, seed=5)
    other = stratified_split(x, y, 0.25, seed=6)
    np.testing.assert_array_equal(first[2], again[2])
    assert not np.array_equal(first[2], other[2])


def test_stratified_split_keeps_every_class_in_train():
    y = _labels([2, 2, 2])
    x = np.zeros((len(y), 1), dtype=np.float32)
    _, y_train, _, _ = stratified_split(x, y, 0.9, seed=0)
    assert set(y_train) == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction):
    y = _labels([10, 10])
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros((20, 1)), y, fraction, seed=0)


def test_dirichlet_partition_is_disjoint_and_complete():
    y = _labels([200] * 10)
    parts = dirichlet_partition(y, num_devices=5, alpha=0.5, seed=42)
    assert len(parts) == 5
    joined = np.concatenate(parts)
    assert len(joined) == len(y)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(y)))


def test_dirichlet_partition_is_deterministic_for_a_seed():
    y = _labels([100] * 5)
    first = dirichlet_partition(y, 4, 0.5, seed=1)
    again = dirichlet_partition(y, 4, 0.5, seed=1)
    other = dirichlet_partition(y, 4, 0.5, seed=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_partition_respects_min_samples():
    y = _labels([60] * 5)
    for seed in range(10):
        parts = dirichlet_partition(y, 6, 0.1, seed=seed, min_samples=25)
        assert min(len(p) for p in parts) >= 25


def test_small_alpha_is_skewed_and_large_alpha_is_even():
    y = _labels([500] * 10)

    def mean_top_class_share(alpha: float) -> float:
        parts = dirichlet_partition(y, 5, alpha, seed=0)
        return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))

    assert mean_top_class_share(0.1) > 0.35
    assert mean_top_class_share(1000.0) < 0.15


def test_dirichlet_partition_gives_up_with_clear_error():
    # With tiny alpha each class lands whole on one device, so no draw gives both 15.
    y = _labels([10, 10, 10])
    with pytest.raises(ValueError, match="in 5 attempts"):
        dirichlet_partition(y, 2, 0.01, seed=0, min_samples=15, max_attempts=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_devices": 0}, "num_devices"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"min_samples": -1}, "min_samples"),
        ({"num_devices": 11}, "cannot give"),
    ],
)
def test_dirichlet_partition_rejects_bad_args(kwargs, match):
    args = {"num_devices": 2, "alpha": 0.5, "seed": 0, "min_samples": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(_labels([50, 50]), **args)
