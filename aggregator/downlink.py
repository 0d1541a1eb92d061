"""Compressed downlink: each new model also goes out as a delta from the previous one.

The aggregator defines the new global model as the old one plus the *decoded* delta,
so a device that applies the delta holds exactly the aggregator's model, bit for bit,
and no error can pile up across versions. What quantization leaves out of one delta is
kept here (server-side error feedback) and sent with the next.
"""

from __future__ import annotations

import numpy as np

from aggregator.config import DownlinkConfig
from edge_client.codecs import ErrorFeedback, encode_vector
from edge_client.protocol import Weights
from edge_client.protocol.seeds import delta_seed
from edge_client.protocol.tensors import flatten_sorted, unflatten_like


class DownlinkEncoder:
    def __init__(self, config: DownlinkConfig, seed: int = 0) -> None:
        self.config = config
        self._feedback: ErrorFeedback | None = None
        self._rng = np.random.default_rng(seed)

    def step(self, current: Weights, proposed: Weights,
             version: int) -> tuple[Weights, bytes | None]:
        """The next global model and the delta blob that leads to it (None: full only)."""
        if not self.config.delta:
            return representable(proposed, self.config.full), None
        old = flatten_sorted(current)
        change = flatten_sorted(proposed) - old
        if self._feedback is None or self._feedback.residual.size != change.size:
            self._feedback = ErrorFeedback(change.size)
        if self.config.codec.error_feedback:
            change = self._feedback.compensate(change)
        encoded = encode_vector(change, self.config.codec, delta_seed(version), self._rng)
        new = representable(unflatten_like(old + encoded.sent, current), self.config.full)
        if self.config.codec.error_feedback:
            # What devices really get, after rounding to the full model's precision.
            self._feedback.record(change, flatten_sorted(new) - old)
        return new, encoded.blob


def representable(weights: Weights, full: str) -> Weights:
    """Round to what the full model's wire precision holds (a no-op for float32)."""
    if full == "f32":
        return weights
    return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}


def on_the_wire(weights: Weights, full: str) -> Weights:
    """The tensors as the full model carries them: float32, or float16."""
    if full == "f32":
        return weights
    return {k: v.astype(np.float16) for k, v in weights.items()}
