"""Compressed downlink: each new model also goes out as a delta from the previous one.

The aggregator defines the new global model as the old one plus the *decoded* delta,
so a device that applies the delta holds exactly the aggregator's model, bit for bit,
and no error can pile up across versions. What quantization leaves out of one delta is
kept here (server-side error feedback) and sent with the next.

The deltas of the last `keep_deltas` versions stay on the broker as a chain, so a
device that skipped a few versions applies them in turn instead of fetching the whole
model (`retained_chain`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aggregator.config import DownlinkConfig
from edge_client.shared.codecs import ErrorFeedback, encode_vector
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.messages import DeltaInfo
from edge_client.shared.protocol.model_transfer import package_delta
from edge_client.shared.protocol.seeds import delta_seed
from edge_client.shared.protocol.tensors import flatten_sorted, unflatten_like

if TYPE_CHECKING:
    from aggregator.store import Store


class DownlinkEncoder:
    """Its only state is the error feedback residual, which the service stores with each
    version (`state`, `restore`); the random stream is derived from (seed, version), so
    a restarted aggregator makes exactly the models an uninterrupted one would."""

    def __init__(self, config: DownlinkConfig, seed: int = 0) -> None:
        self.config = config
        self._feedback: ErrorFeedback | None = None
        self._seed = seed

    def state(self) -> bytes | None:
        """The residual to store with the version just made (None: nothing to keep)."""
        return None if self._feedback is None else self._feedback.to_bytes()

    def start_over(self, weights: Weights) -> Weights:
        """A version that is a copy of an older one (a rollback) goes out whole: no delta,
        and the error feedback starts again from zero."""
        self._feedback = None
        return representable(weights, self.config.full)

    def restore(self, state: bytes, size: int) -> None:
        """Continue from a stored residual of a model with `size` parameters;
        ValueError if it is damaged or for another size."""
        self._feedback = ErrorFeedback.from_bytes(state, size)

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
        rng = np.random.default_rng((self._seed % 2**64, version))
        encoded = encode_vector(change, self.config.codec, delta_seed(version), rng)
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


def retained_chain(store: Store, version: int, config: DownlinkConfig,
                   chunk_size: int) -> list[tuple[DeltaInfo, list[bytes]]]:
    """The stored deltas of the last `keep_deltas` versions, oldest first, ending at
    `version` without a gap; each with its manifest entry and chunk messages.

    Rebuilt from the store, so it is the same after a restart. The codec named is
    today's `[downlink.codec]`: a delta made under another one fails the device's hash
    check, and the device then fetches the full model.
    """
    chain: list[tuple[DeltaInfo, list[bytes]]] = []
    for step in range(version, max(0, version - max(1, config.keep_deltas)), -1):
        blob, sha256 = store.model_delta(step), store.model_sha256(step)
        if not blob or sha256 is None:
            break
        chain.append(package_delta(blob, step, config.codec.to_wire(), chunk_size,
                                   model_sha256=sha256))
    return chain[::-1]
