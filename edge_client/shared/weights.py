"""Model weights as named arrays, and their one flat-vector form.

`Weights` maps a name such as ``"dense0.weight"`` to a float32 array; a dict's insertion
order is the model's layer order. Codecs, secure aggregation, DP, the strategies and the
downlink all work on one flat vector: its layout is the tensors in sorted-name order, so
it is the same on every device and the aggregator whatever order a dict is in. Needs
numpy only, so the training package can use it without the protocol.
"""

from __future__ import annotations

import numpy as np

Weights = dict[str, np.ndarray]


def flatten_sorted(weights: Weights) -> np.ndarray:
    """One float32 vector of every tensor, in sorted-name order."""
    if not weights:
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(weights[name], np.float32).ravel()
                           for name in sorted(weights)])


def unflatten_like(vector: np.ndarray, reference: Weights) -> Weights:
    """Split a flat vector (sorted-name order) back into float32 tensors shaped like
    `reference` and in its order; the tensors are copies, not views of `vector`."""
    total = sum(int(np.prod(a.shape)) for a in reference.values())
    if vector.shape != (total,):
        raise ValueError(f"vector has {vector.size} values, the model has {total}")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(reference):
        size = int(np.prod(reference[name].shape))
        out[name] = vector[offset:offset + size].reshape(reference[name].shape)
        offset += size
    return {name: out[name].astype(np.float32) for name in reference}
