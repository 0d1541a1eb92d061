"""Turning a reassembled update message into a checked, dense update."""

from __future__ import annotations

import dataclasses

from edge_client.codecs import CodecConfig, decode_dense
from edge_client.protocol import RemoteProtocolError, Update, Weights, decode
from edge_client.protocol.seeds import update_seed
from edge_client.protocol.tensors import check_like, unflatten_like


def open_update(message: bytes, global_weights: Weights) -> Update:
    """Decode, validate and densify an update; RemoteProtocolError says what is wrong.

    Compressed updates come back with `tensors` filled from their blob, so everything
    after ingest (storage aside) sees one dense shape.
    """
    size = sum(w.size for w in global_weights.values())
    update = decode(message, expect=Update, max_elements=size)
    assert isinstance(update, Update)
    if update.codec is not None:
        codec = CodecConfig.from_wire(update.codec)
        seed = update_seed(update.task_id, update.device_id)
        dense = decode_dense(update.blob, codec, size, seed)
        update = dataclasses.replace(update, tensors=unflatten_like(dense, global_weights))
    check_like(update.tensors, global_weights)
    return update


def check_sender(update: Update, device: str, transfer: str) -> None:
    """An update must come on its own device's topic, under its own nonce."""
    if update.device_id != device:
        raise RemoteProtocolError(f"update names device {update.device_id!r} but came on "
                                  f"{device!r}'s topic")
    if update.nonce != transfer:
        raise RemoteProtocolError("update nonce does not match its transfer id")
