"""Checks on a device's own data, made when the data is handed over (at start-up or by
set_data) instead of at the first task, where a bad sample would end the device loop."""

from __future__ import annotations

import numpy as np


def checked_local_data(x: np.ndarray, y: np.ndarray,
                       negative_labels_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (samples, ...) and y as int64 labels >= 0, or ValueError saying what
    is wrong: shapes, NaN or infinite features, labels that are not whole numbers.
    `negative_labels_ok` leaves the label range to a caller that knows the model's."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim >= 1 and y.ndim == 1 and len(x) != len(y):
        raise ValueError(f"need as many labels as samples; got x {x.shape}, y {y.shape}")
    if x.ndim < 2 or len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"need x of shape (samples, ...) and y of shape (samples,), at "
                         f"least one sample; got x {x.shape}, y {y.shape}")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"x and y must be numbers; got dtypes {x.dtype} and {y.dtype}")
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        raise ValueError("x and y must be real numbers, not complex")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise ValueError(f"x holds NaN or infinite values in {len(rows)} of {len(x)} samples "
                         f"(first: sample {rows[0]})")
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.isfinite(y) & (np.floor(y) == y)
        if not whole.all():
            first = int(np.flatnonzero(~whole)[0])
            raise ValueError(f"labels y must be whole numbers; y[{first}] is {y[first].item()!r}")
    if y.min() < 0 and not negative_labels_ok:
        raise ValueError(f"labels y must be >= 0; the smallest is {y.min().item()}")
    return x, y.astype(np.int64)
