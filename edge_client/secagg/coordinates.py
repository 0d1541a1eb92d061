"""Random-k under secure aggregation: every device keeps the same coordinates.

Masks only cancel coordinate by coordinate, so all devices of a round must send the same
k coordinates. They are drawn with the codecs' `randk_indices` from a seed derived from
the public round seed, so the server and every device compute them and only k integers
are masked and sent.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edge_client.codecs.sparsify import k_for, randk_indices


def randk_seed(round_seed: bytes) -> int:
    """The random-k seed of a round; public, like the round seed it comes from."""
    return int.from_bytes(hashlib.sha256(b"fedge-secagg/v1/randk\0" + round_seed).digest()[:8],
                          "little")


def shared_coordinates(round_seed: bytes, n: int, fraction: float) -> np.ndarray:
    """The sorted int64 indices all devices keep out of `n`: round(n * fraction) of them."""
    return randk_indices(n, k_for(n, fraction), randk_seed(round_seed))


def gather(vector: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A device's kept coordinates, in index order."""
    return np.asarray(vector).reshape(-1)[indices]


def scatter(n: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense float64 vector of length `n` with `values` at `indices`, zero elsewhere."""
    out = np.zeros(n, dtype=np.float64)
    out[indices] = values
    return out
