"""Turning a reassembled update message into a checked, dense update."""

from __future__ import annotations

import dataclasses

import numpy as np

from aggregator.strategy.folding import FlatUpdate
from edge_client.shared.codecs import CodecConfig, decode_dense, decode_sparse
from edge_client.shared.identity import parse_public_key
from edge_client.shared.protocol import RemoteProtocolError, Update, Weights, decode
from edge_client.shared.protocol.seeds import update_seed
from edge_client.shared.protocol.signing import is_signed, open_envelope, verify_envelope
from edge_client.shared.protocol.tensors import check_like, flatten_sorted, unflatten_like


def open_update(message: bytes, global_weights: Weights) -> Update:
    """Decode, validate and densify an update; RemoteProtocolError says what is wrong.

    Compressed updates come back with `tensors` filled from their blob, so everything
    after ingest (storage aside) sees one dense shape.
    """
    size = sum(w.size for w in global_weights.values())
    update = decode(message, expect=Update, max_elements=size)
    if update.codec is not None:
        codec = CodecConfig.from_wire(update.codec)
        seed = update_seed(update.task_id, update.device_id)
        dense = decode_dense(update.blob, codec, size, seed)
        update = dataclasses.replace(update, tensors=unflatten_like(dense, global_weights))
    elif _partial(update, global_weights):
        check_like(update.tensors, {n: global_weights[n] for n in update.tensors})
        zeros = {n: np.zeros_like(w) for n, w in global_weights.items()}
        update = dataclasses.replace(update, tensors={**zeros, **update.tensors})
    check_like(update.tensors, global_weights)
    return update


def _partial(update: Update, global_weights: Weights) -> bool:
    """A dense update that leaves tensors out (they count as zero): a personalised
    device's personal layers, a clustered device's other clusters (docs/protocol.md)."""
    return bool(update.tensors) and update.tensors.keys() < global_weights.keys()


def _partial_values(update: Update, global_weights: Weights) -> FlatUpdate:
    """A partial dense update's values at their coordinates of the flat layout."""
    check_like(update.tensors, {n: global_weights[n] for n in update.tensors})
    index, values, offset = [], [], 0
    for name in sorted(global_weights):
        count = int(global_weights[name].size)
        if name in update.tensors:
            index.append(np.arange(offset, offset + count, dtype=np.int64))
            values.append(np.asarray(update.tensors[name], np.float32).ravel())
        offset += count
    return FlatUpdate(np.concatenate(values), offset, np.concatenate(index))


def open_flat_update(message: bytes, global_weights: Weights) -> tuple[Update, FlatUpdate]:
    """Decode and validate an update, its values over the flat model layout.

    A compressed update stays sparse (its coordinates and values, no dense copy) and
    comes back with empty `tensors`: the round folds the values straight into its sum
    (aggregator/strategy/folding.py). A dense update keeps its tensors as decoded.
    """
    size = sum(w.size for w in global_weights.values())
    update = decode(message, expect=Update, max_elements=size)
    if update.codec is None and _partial(update, global_weights):
        return update, _partial_values(update, global_weights)
    if update.codec is None:
        check_like(update.tensors, global_weights)  # names, shapes, finite values
        return update, FlatUpdate(flatten_sorted(update.tensors), size)
    codec = CodecConfig.from_wire(update.codec)
    index, values = decode_sparse(update.blob, codec, size,
                                  update_seed(update.task_id, update.device_id))
    if not np.isfinite(values).all():  # as check_like refuses a dense one
        raise RemoteProtocolError("the update's values hold NaN or infinity")
    if len(index) == size:  # every coordinate sent (sparsify "none"): dense
        return update, FlatUpdate(values, size)
    return update, FlatUpdate(values, size, index)


def check_sender(update: Update, device: str, transfer: str) -> None:
    """An update must come on its own device's topic, under its own nonce."""
    if update.device_id != device:
        raise RemoteProtocolError(f"update names device {update.device_id!r} but came on "
                                  f"{device!r}'s topic")
    if update.nonce != transfer:
        raise RemoteProtocolError("update nonce does not match its transfer id")


def verified_body(message: bytes, device: str, enrolled_key: str | None,
                  required: bool, what: str = "update") -> bytes:
    """The message (an update, or `what`) inside its signature, checked against the key
    enrolled for `device`.

    The device is the one the topic names, so a device cannot sign for another; a
    revoked or unknown device has no key here. Without security the envelope, if any,
    is taken off unchecked.
    """
    if not required:
        return open_envelope(message).body if is_signed(message) else message
    if enrolled_key is None:
        raise RemoteProtocolError(f"device {device!r} is not enrolled, or was revoked")
    if not is_signed(message):
        raise RemoteProtocolError(f"{what} is not signed")
    return verify_envelope(open_envelope(message), parse_public_key(enrolled_key))


def check_clock(update: Update, now: float, max_skew_s: float) -> None:
    """Refuse updates stamped too far from our clock: old captures replayed later."""
    skew = update.created_at - now
    if abs(skew) > max_skew_s:
        raise RemoteProtocolError(f"update time is {skew:+.0f} s from the aggregator's clock "
                                  f"(limit {max_skew_s:.0f} s)")
