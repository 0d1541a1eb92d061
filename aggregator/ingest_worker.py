"""One ingest worker's sans-IO part: update chunks in, a verified and decoded update (or a
refusal) out, for the single writer (parallel ingest, aggregator/ingest_workers.py).

It does what the service's own path (aggregator/core/ingest.py `on_chunk`) does before it
touches the store: reassembly under the same limits, the signature against the enrolled
key, decoding over the model's layout and the sender check. Everything that needs the
store or the round (duplicates, the task, the verdict, the rejection gate, counters,
acks) stays with the writer, so a worker's answer is handled there exactly as the
service would have handled the chunks itself.

Which worker reassembles a device's uploads is fixed: `owner_of(device, workers)`, a
stable hash of the device id. A chunk that reaches another worker (the broker shares
messages among a shared subscription's members one at a time, not transfer by
transfer) is forwarded to the owner, so all the chunks of one transfer meet in one
assembler and a device's limits (open uploads) and once-per-transfer answers hold.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from aggregator.config import AggregatorConfig
from aggregator.core.events import Instant, RefusedUpload, VerifiedUpdate
from aggregator.ingest import check_sender, open_flat_update, verified_body
from aggregator.limits import upload_assembler
from aggregator.refused_transfers import RefusedTransfers
from edge_client.shared.protocol import RemoteProtocolError, Topics, Weights

log = logging.getLogger("aggregator.ingest_worker")
WorkerResult = VerifiedUpdate | RefusedUpload


def owner_of(device: str, workers: int) -> int:
    """The worker that reassembles `device`'s uploads: stable across processes and runs
    (zlib.crc32, not the salted built-in hash)."""
    return zlib.crc32(device.encode()) % workers


class WorkerIngest:
    """Reassemble, verify and decode; `key_of(device)` is the enrolled, unrevoked key
    (read from the store when the transfer completes, so a revocation applies at once)."""

    def __init__(self, config: AggregatorConfig, layout: Weights,
                 key_of: Callable[[str], str | None]) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.layout = layout  # the model's names and shapes; its values are never read
        self.key_of = key_of
        self.assembler = upload_assembler(config)
        self._refused = RefusedTransfers()

    def on_chunk(self, topic: str, payload: bytes, at: Instant) -> WorkerResult | None:
        """The result once a transfer is complete or refused; None while it is not (or
        for a topic without a valid device id, which the service ignores too)."""
        try:
            device = self.topics.device_of(topic)
        except ValueError:
            return None
        try:
            done = self.assembler.add(device, payload, at.mono)
        except RemoteProtocolError as exc:
            if self._refused.already_answered(device, exc.transfer):
                return None
            return RefusedUpload(topic, device, exc.transfer or "", exc.reason, False, at)
        if done is None:
            return None
        transfer, message = done
        security = self.config.security
        try:
            key = self.key_of(device) if security.enabled else None
            message = verified_body(message, device, key, required=security.enabled)
        except RemoteProtocolError as exc:
            return RefusedUpload(topic, device, transfer, exc.reason, False, at)
        try:
            update, values = open_flat_update(message, self.layout)
            check_sender(update, device, transfer)
        except RemoteProtocolError as exc:
            return RefusedUpload(topic, device, transfer, exc.reason, True, at)
        return VerifiedUpdate(topic, device, transfer, message, update, values, at)

    def expire(self, mono: float) -> None:
        for device, transfer in self.assembler.expire(mono):
            log.warning("aggregator: dropped a stalled upload %s from %s", transfer[:8], device)
