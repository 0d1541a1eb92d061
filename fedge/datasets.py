"""The demo's data: the digits set, a stratified test split, and a non-IID device partition."""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """8x8 digits bundled with scikit-learn (no download): x float32 in [0, 1], y int64.

    scikit-learn is imported here only, so devices never need it.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as exc:
        raise ImportError("load_digits needs scikit-learn: pip install 'fedge[demo]'") from exc
    data = sklearn_load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return x, y


def stratified_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return x_train, y_train, x_test, y_test with each class split in proportion.

    Every class with two or more samples keeps at least one in train; rows stay in input order.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be 1-D with {len(x)} labels, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("cannot split an empty data set")
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = min(round(len(members) * test_fraction), len(members) - 1)
        test_parts.append(members[:n_test])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    if not is_test.any():
        raise ValueError(f"test_fraction {test_fraction} leaves the test set empty")
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def dirichlet_partition(
    y: np.ndarray,
    num_devices: int,
    alpha: float,
    seed: int,
    min_samples: int = 10,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Split sample indices across devices with per-class shares drawn from Dir(alpha).

    Small alpha gives skewed (non-IID) devices, large alpha near-uniform ones. Draws are
    repeated until every device has min_samples; the result is disjoint and covers all indices.
    """
    y = np.asarray(y)
    _check_partition_args(y, num_devices, alpha, min_samples, max_attempts)
    rng = np.random.default_rng(seed)
    for _ in range(max_attempts):
        parts = _dirichlet_draw(y, num_devices, alpha, rng)
        if min(len(part) for part in parts) >= min_samples:
            return parts
    raise ValueError(
        f"no partition gave all {num_devices} devices >= {min_samples} samples in "
        f"{max_attempts} attempts (alpha={alpha}); raise alpha or lower min_samples"
    )


def _check_partition_args(
    y: np.ndarray, num_devices: int, alpha: float, min_samples: int, max_attempts: int
) -> None:
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be 1-D and non-empty, got shape {y.shape}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if num_devices * min_samples > len(y):
        raise ValueError(
            f"{len(y)} samples cannot give {num_devices} devices {min_samples} samples each"
        )


def _dirichlet_draw(
    y: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One attempt: cut each class's shuffled indices at Dir(alpha) proportions."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for device, chunk in enumerate(np.split(members, cuts)):
            parts[device].append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]
