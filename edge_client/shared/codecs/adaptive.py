"""Adaptive top-k: how many coordinates to send this time, from the update itself.

A fixed top-k fraction sends as many coordinates in a round whose change is spread
thin as in one where a few coordinates carry it all. With `energy > 0` the device sends
instead the fewest largest coordinates of its error-compensated update (the update
plus the error-feedback residual) that carry `energy` of its squared norm, never fewer
than `fraction` nor more than `max_fraction` of them. When the residual builds up, as
it does on hard non-IID jobs where fixed 1% top-k starves the model, more goes out;
when the update is concentrated, less (docs/compression.md, docs/heterogeneity.md).

The chosen count travels as an ordinary top-k codec whose fraction is k / n, so the
aggregator decodes it like any other top-k update and needs no setting of its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_client.shared.codecs.config import CodecConfig


def codec_for_update(vector: np.ndarray, codec: CodecConfig) -> CodecConfig:
    """The plain codec to encode `vector` (already error-compensated) with: `codec`
    itself unless it is adaptive, else top-k with this update's own fraction."""
    if not codec.adaptive:
        return codec
    n = int(vector.size)
    k = energy_count(vector, codec.energy)
    low = max(1, round(n * codec.fraction))
    high = max(low, round(n * codec.max_fraction))
    k = min(max(k, low), high, n)
    return dataclasses.replace(codec, fraction=k / n, energy=0.0, max_fraction=0.0)


def energy_count(vector: np.ndarray, energy: float) -> int:
    """The fewest largest-magnitude coordinates whose squares sum to `energy` of the
    total (0 for an all-zero vector)."""
    squares = np.sort(np.square(vector, dtype=np.float64))[::-1]
    cumulative = np.cumsum(squares)
    if cumulative.size == 0 or cumulative[-1] <= 0:
        return 0
    return int(np.searchsorted(cumulative, energy * cumulative[-1])) + 1


# The adaptive uplink measured in docs/heterogeneity.md: 1% to 6% top-k carrying half the
# compensated update's energy, 4-bit values. `--uplink adaptive` in the demo.
ADAPTIVE_UPLINK = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4", energy=0.5,
                              max_fraction=0.06)
