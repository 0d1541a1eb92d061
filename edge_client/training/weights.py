"""Model weights as plain named arrays, plus the flat-vector form used on the wire."""

from __future__ import annotations

import math

import numpy as np

Weights = dict[str, np.ndarray]
"""Flat name -> float32 array, e.g. ``"dense0.weight"``; insertion order is the layer order."""

WeightSpec = list[tuple[str, tuple[int, ...]]]
"""Names and shapes, in order, needed to turn a flat vector back into ``Weights``."""


def flatten_weights(weights: Weights) -> tuple[np.ndarray, WeightSpec]:
    """Concatenate all arrays into one float32 vector so aggregation is plain vector math.

    The spec keeps insertion order (not sorted) so it matches the model's layer order.
    """
    spec = [(name, tuple(int(d) for d in np.shape(array))) for name, array in weights.items()]
    if not weights:
        return np.zeros(0, dtype=np.float32), spec
    parts = [np.asarray(array, dtype=np.float32).ravel() for array in weights.values()]
    return np.concatenate(parts), spec


def unflatten_weights(vector: np.ndarray, spec: WeightSpec) -> Weights:
    """Split a flat vector back into named arrays; sizes must match the spec exactly."""
    vector = np.asarray(vector)
    if vector.ndim != 1:
        raise ValueError(f"weight vector must be 1-D, got shape {vector.shape}")
    expected = sum(math.prod(shape) for _, shape in spec)
    if vector.size != expected:
        raise ValueError(
            f"weight vector has {vector.size} values but the spec needs {expected} "
            f"({len(spec)} arrays)"
        )
    weights: Weights = {}
    offset = 0
    for name, shape in spec:
        size = math.prod(shape)
        chunk = vector[offset : offset + size]
        weights[name] = chunk.astype(np.float32, copy=True).reshape(shape)
        offset += size
    return weights


def check_weights_match(expected: Weights, actual: Weights) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped array.

    Catching a layout mismatch here beats a silent broadcast or a numpy error deep in training.
    """
    missing = [name for name in expected if name not in actual]
    unexpected = [name for name in actual if name not in expected]
    wrong_shape = [
        f"{name}: expected {tuple(expected[name].shape)}, got {tuple(np.shape(actual[name]))}"
        for name in expected
        if name in actual and tuple(np.shape(actual[name])) != tuple(expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if wrong_shape:
        problems.append(f"wrong shape [{'; '.join(wrong_shape)}]")
    if problems:
        raise ValueError("weights do not match the model: " + ", ".join(problems))
