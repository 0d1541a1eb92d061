"""Checks on a device's own data, made when the data is handed over (at start-up or by
set_data) instead of at the first task, where a bad sample would end the device loop.

Data larger than memory comes as memory-mapped arrays (`np.load(path, mmap_mode="r")` or
`np.memmap`): those are checked a block of rows at a time and handed on as they are, so
the device never holds more than a block of them; the trainer converts each batch it reads.
"""

from __future__ import annotations

import mmap

import numpy as np

_BLOCK_BYTES = 8 * 2**20  # bytes of x checked at a time


def checked_local_data(x: np.ndarray, y: np.ndarray,
                       negative_labels_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (samples, ...) and y as int64 labels >= 0, or ValueError saying what
    is wrong: shapes, NaN or infinite features, labels that are not whole numbers.
    A memory-mapped array is returned as it is, not converted (that would load it whole).
    `negative_labels_ok` leaves the label range to a caller that knows the model's."""
    x_mapped, y_mapped = is_mapped(x), is_mapped(y)
    x, y = np.asarray(x), np.asarray(y)  # a memmap stays a view of its file: no copy
    if x.ndim >= 1 and y.ndim == 1 and len(x) != len(y):
        raise ValueError(f"need as many labels as samples; got x {x.shape}, y {y.shape}")
    if x.ndim < 2 or len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"need x of shape (samples, ...) and y of shape (samples,), at "
                         f"least one sample; got x {x.shape}, y {y.shape}")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"x and y must be numbers; got dtypes {x.dtype} and {y.dtype}")
    if np.iscomplexobj(x) or np.iscomplexobj(y):
        raise ValueError("x and y must be real numbers, not complex")
    if not x_mapped:
        x = x.astype(np.float32)
    _check_finite(x)
    if not np.issubdtype(y.dtype, np.integer):
        _check_whole(y)
    if y.min() < 0 and not negative_labels_ok:
        raise ValueError(f"labels y must be >= 0; the smallest is {y.min().item()}")
    return x, (y if y_mapped else y.astype(np.int64))


def is_mapped(a: object) -> bool:
    """Whether `a` is a memory-mapped array or a view of one (np.asarray of a memmap)."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) or isinstance(a.base, mmap.mmap):
            return True
        a = a.base
    return False


def row_blocks(x: np.ndarray) -> range:
    """Starts of blocks of rows of about _BLOCK_BYTES each (at least one row); the step
    is the block's length."""
    return range(0, len(x), max(1, _BLOCK_BYTES // max(1, x[:1].nbytes)))


def _check_finite(x: np.ndarray) -> None:
    if np.issubdtype(x.dtype, np.integer):
        return
    bad_rows: list[np.ndarray] = []
    blocks = row_blocks(x)
    for begin in blocks:
        with np.errstate(over="ignore"):  # 1e300 becomes inf as float32: reported below
            block = x[begin : begin + blocks.step].astype(np.float32, copy=False)
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            bad_rows.append(begin + np.flatnonzero(bad))
    if bad_rows:
        rows = np.concatenate(bad_rows)
        raise ValueError(f"x holds NaN or infinite values in {len(rows)} of {len(x)} samples "
                         f"(first: sample {rows[0]})")


def _check_whole(y: np.ndarray) -> None:
    blocks = row_blocks(y)
    for begin in blocks:
        block = y[begin : begin + blocks.step]
        whole = np.isfinite(block) & (np.floor(block) == block)
        if not whole.all():
            first = begin + int(np.flatnonzero(~whole)[0])
            raise ValueError(f"labels y must be whole numbers; y[{first}] is {y[first].item()!r}")
