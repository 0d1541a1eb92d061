"""Random-k under secure aggregation: every device keeps the same coordinates.

Masks only cancel coordinate by coordinate, so all devices of a round must send the same
k coordinates. They are drawn from a key derived from the public round seed, so the
server and every device compute them and only k integers are masked and sent.

The draw must not depend on the NumPy version: a device and the gateway that picked
different coordinates would still cancel their masks, and the gateway would put the sum
back in the wrong places without noticing (the codecs' random-k carries a checksum for
this; a masked vector cannot). So the coordinates are the k lowest of one ChaCha20 score
per coordinate (ties to the lower index), not `numpy.random.Generator.choice`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from edge_client.shared.codecs.sparsify import k_for
from edge_client.shared.secagg.prg import expand_mask


def randk_key(round_seed: bytes) -> bytes:
    """The random-k key of a round; public, like the round seed it comes from."""
    return hashlib.sha256(b"fedge-secagg/v1/randk\0" + round_seed).digest()


def shared_coordinates(round_seed: bytes, n: int, fraction: float) -> np.ndarray:
    """The sorted int64 indices all devices keep out of `n`: round(n * fraction) of them."""
    scores = expand_mask(randk_key(round_seed), n, 64)  # little-endian words, any NumPy
    kept = np.argsort(scores, kind="stable")[:k_for(n, fraction)]
    return np.sort(kept).astype(np.int64)


def gather(vector: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A device's kept coordinates, in index order."""
    return np.asarray(vector).reshape(-1)[indices]


def scatter(n: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense float64 vector of length `n` with `values` at `indices`, zero elsewhere."""
    out = np.zeros(n, dtype=np.float64)
    out[indices] = values
    return out
