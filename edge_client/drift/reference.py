"""A compact reference of a device's training inputs: per feature, quantile bin edges
and the share of the inputs in each bin; and PSI, how far other inputs are from it.

PSI (population stability index) of one feature: sum over its bins of
(q - p) * ln(q / p), p the reference's share of a bin and q the new inputs' share, both
floored at EPSILON so an empty bin counts as a big, finite shift. By the usual rule of
thumb, below 0.1 is stable, 0.1-0.25 a moderate shift, above 0.25 a significant one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BINS = 10
MAX_BINS = 64
MAX_FEATURES = 65536  # inputs wider than this are not monitored (one array per feature)
EPSILON = 1e-4


def as_rows(x: Any, what: str = "inputs") -> np.ndarray:
    """`x` as finite float64 rows (n, features); ValueError saying what is wrong."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an array of numbers") from None
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"{what} must hold at least one sample, not shape {arr.shape}")
    rows = arr.reshape(arr.shape[0], -1)
    if not 1 <= rows.shape[1] <= MAX_FEATURES:
        raise ValueError(f"{what} must have 1 to {MAX_FEATURES} features, not {rows.shape[1]}")
    return rows


@dataclass(frozen=True)
class InputReference:
    """Per feature: `edges` (sorted, distinct cut points) and `shares` (one more than the
    edges, summing to 1): a feature's value v falls in bin searchsorted(edges, v, "right")."""

    edges: tuple[np.ndarray, ...]
    shares: tuple[np.ndarray, ...]
    samples: int

    @property
    def features(self) -> int:
        return len(self.edges)

    @classmethod
    def of(cls, x: Any, bins: int = DEFAULT_BINS) -> InputReference:
        """The reference of training inputs `x` (n, *input_shape); non-finite rows are
        left out. ValueError for no usable rows or a bad `bins`."""
        if not (isinstance(bins, int) and 2 <= bins <= MAX_BINS):
            raise ValueError(f"bins must be an integer from 2 to {MAX_BINS}, not {bins!r}")
        rows = finite_rows(as_rows(x, "training inputs"))
        if rows.shape[0] == 0:
            raise ValueError("training inputs hold no finite sample")
        cuts = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        edges, shares = [], []
        for column in rows.T:
            e = np.unique(np.quantile(column, cuts))
            edges.append(e)
            shares.append(_shares(np.searchsorted(e, column, side="right"), e.size + 1))
        return cls(tuple(edges), tuple(shares), int(rows.shape[0]))

    def bins_of(self, x: Any) -> np.ndarray:
        """The bin of each value of each finite row of `x`: (n, features) uint8.
        ValueError if `x` has another number of features."""
        rows = finite_rows(as_rows(x))
        if rows.shape[1] != self.features:
            raise ValueError(f"inputs have {rows.shape[1]} features; the reference has "
                             f"{self.features}")
        out = np.empty(rows.shape, dtype=np.uint8)
        for i, e in enumerate(self.edges):
            out[:, i] = np.searchsorted(e, rows[:, i], side="right")
        return out

    def psi_of_bins(self, bins: np.ndarray) -> np.ndarray:
        """PSI per feature of inputs already binned by `bins_of` (at least one row)."""
        return np.array([_psi(s, _shares(bins[:, i], s.size))
                         for i, s in enumerate(self.shares)])

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "edges": [e.tolist() for e in self.edges],
                "shares": [s.tolist() for s in self.shares]}

    @classmethod
    def from_json(cls, data: Any) -> InputReference:
        """Back from to_json; ValueError naming what is malformed."""
        try:
            samples = data["samples"]
            raw_edges, raw_shares = list(data["edges"]), list(data["shares"])
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not an input reference (missing {exc})") from None
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError("reference: samples must be an integer >= 1")
        if not 1 <= len(raw_edges) == len(raw_shares) <= MAX_FEATURES:
            raise ValueError("reference: edges and shares must list the same features")
        edges, shares = [], []
        for i, (e, s) in enumerate(zip(raw_edges, raw_shares, strict=True)):
            e_arr, s_arr = _numbers(e, f"edges[{i}]"), _numbers(s, f"shares[{i}]")
            if e_arr.size >= MAX_BINS or s_arr.size != e_arr.size + 1 or (
                    e_arr.size > 1 and not np.all(np.diff(e_arr) > 0)):
                raise ValueError(f"reference: feature {i} has malformed bins")
            if np.any(s_arr < 0) or abs(float(s_arr.sum()) - 1.0) > 1e-6:
                raise ValueError(f"reference: shares[{i}] must be >= 0 and sum to 1")
            edges.append(e_arr)
            shares.append(s_arr)
        return cls(tuple(edges), tuple(shares), samples)


def psi(reference: InputReference, x: Any) -> np.ndarray:
    """PSI per feature of inputs `x` against `reference`; ValueError if `x` has no
    finite row or the wrong number of features."""
    bins = reference.bins_of(x)
    if bins.shape[0] == 0:
        raise ValueError("inputs hold no finite sample")
    return reference.psi_of_bins(bins)


def finite_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.isfinite(rows).all(axis=1)]


def _shares(bin_ids: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(bin_ids, minlength=size).astype(np.float64)
    return counts / counts.sum()


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    p = np.maximum(expected, EPSILON)
    q = np.maximum(actual, EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def _numbers(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"reference: {what} must be a list of numbers") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"reference: {what} must be a flat list of finite numbers")
    return arr
