"""Checking that weights fit a model; `Weights` and its flat form are edge_client.shared.weights."""

from __future__ import annotations

import numpy as np

from edge_client.shared.weights import Weights


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
