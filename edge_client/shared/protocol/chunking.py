"""Chunking of any payload into MQTT messages of bounded size, and reassembly.

Sans-IO: `split` returns the messages to publish, and `Assembler.add` takes one
received message and returns the whole payload once every chunk is in. Neither touches
a socket, so tests can feed them dropped, duplicated and reordered chunks directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import msgpack

from edge_client.shared.protocol.bounds import MAX_INT, describe, is_int
from edge_client.shared.protocol.errors import LocalProtocolError, RemoteProtocolError
from edge_client.shared.protocol.messages import PROTOCOL_VERSION, unpack_map
from edge_client.shared.protocol.open_uploads import OpenUploads

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024
CHUNK_HEADER_RESERVE = 256  # room for the chunk's own fields inside the size limit
MAX_TRANSFER_ID = 64


@dataclass(frozen=True)
class Chunk:
    """One piece of a payload: `index` of `count`, with the whole payload's size and digest."""

    transfer: str
    index: int
    count: int
    size: int
    sha256: str
    data: bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunk messages `split` makes of a payload of `size` bytes."""
    return math.ceil(size / (chunk_size - CHUNK_HEADER_RESERVE))


def split(payload: bytes, transfer: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """Encode `payload` as chunk messages, each at most `chunk_size` bytes long."""
    if chunk_size <= CHUNK_HEADER_RESERVE:
        raise LocalProtocolError(f"chunk_size must exceed {CHUNK_HEADER_RESERVE} bytes")
    if not payload:
        raise LocalProtocolError("cannot send an empty payload")
    if len(transfer) > MAX_TRANSFER_ID:
        raise LocalProtocolError("transfer id too long")
    step = chunk_size - CHUNK_HEADER_RESERVE
    count = chunk_count(len(payload), chunk_size)
    digest = sha256_hex(payload)
    return [
        encode_chunk(Chunk(transfer, i, count, len(payload), digest,
                           payload[i * step:(i + 1) * step]))
        for i in range(count)
    ]


def encode_chunk(chunk: Chunk) -> bytes:
    return msgpack.packb(
        {"v": PROTOCOL_VERSION, "kind": "chunk", "transfer": chunk.transfer, "i": chunk.index,
         "n": chunk.count, "size": chunk.size, "sha256": chunk.sha256, "data": chunk.data},
        use_bin_type=True,
    )


def decode_chunk(message: bytes) -> Chunk:
    """Parse one chunk message; every field is checked before it is trusted."""
    obj = unpack_map(message)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind != "chunk":
        raise RemoteProtocolError(f"expected a chunk, got {describe(kind)}")
    transfer = obj.get("transfer")
    if not isinstance(transfer, str) or not 0 < len(transfer) <= MAX_TRANSFER_ID:
        raise RemoteProtocolError("chunk: bad transfer id")
    index, count, size = obj.get("i"), obj.get("n"), obj.get("size")
    digest, data = obj.get("sha256"), obj.get("data")
    if not (is_int(index) and is_int(count) and is_int(size)):
        raise RemoteProtocolError("chunk: index, count and size must be integers", transfer)
    if not (1 <= count <= MAX_INT and 0 <= index < count and 1 <= size <= MAX_INT):
        raise RemoteProtocolError(f"chunk: index {describe(index)} of {describe(count)} for "
                                  f"size {describe(size)} is out of range", transfer)
    if not isinstance(digest, str) or len(digest) != 64:
        raise RemoteProtocolError("chunk: bad sha256", transfer)
    if not isinstance(data, bytes) or not data:
        raise RemoteProtocolError("chunk: no data", transfer)
    return Chunk(transfer, index, count, size, digest, data)


Key = tuple[str, str]  # (source, transfer)


class PartSpill(Protocol):
    """Where an Assembler keeps chunk data past its memory budget (the aggregator's:
    files, aggregator/upload_spill.py). Devices uploading at once interleave their
    chunks, so the partial uploads held grow with the cohort; spilled, they do not."""

    def put(self, key: Key, index: int, data: bytes) -> bool:
        """Keep chunk `index` of upload `key`; False: not kept (hold it in memory)."""
        ...

    def take(self, key: Key) -> dict[int, bytes | memoryview]:
        """The upload's kept chunks by index, forgotten here; OSError if unreadable."""
        ...

    def discard(self, key: Key) -> None:
        """Forget the upload's kept chunks (a dropped upload); none kept is fine."""
        ...


@dataclass
class _Partial:
    first: Chunk
    started_at: float
    parts: dict[int, bytes | None] = field(default_factory=dict)  # None: in the spill
    received: int = 0
    in_memory: int = 0  # bytes of `parts` held here
    spilled: bool = False


class Assembler:
    """Reassembles chunked payloads per source with bounded memory and O(1) work per chunk.

    A source (a device, or the aggregator for models) may have at most
    `max_transfers_per_source` transfers in progress; a new one evicts that source's least
    recently active one. Across all sources at most `max_transfers` are in progress and
    their declared sizes stay under `max_total_bytes` (default: four payloads of the
    maximum size); a new transfer evicts others until it fits, fairly per source (see
    `OpenUploads.victim`). Evictions are counted and logged at most every 10 s.

    With a `spill`, at most `memory_bytes` of chunk data stay in memory; further chunks
    go to the spill until their upload completes (or is dropped).
    """

    def __init__(self, max_payload: int, max_transfers_per_source: int = 2,
                 timeout_s: float = 300.0, max_total_bytes: int | None = None,
                 max_transfers: int = 1000, memory_bytes: int = 0,
                 spill: PartSpill | None = None) -> None:
        self.max_payload = max_payload
        self.max_transfers_per_source = max_transfers_per_source
        self.max_transfers = max_transfers
        self.timeout_s = timeout_s
        self.max_total_bytes = max_total_bytes or 4 * max_payload
        self.evicted = 0  # transfers dropped by the global limits
        self._partial: dict[tuple[str, str], _Partial] = {}
        self._open = OpenUploads()
        self._reserved = 0  # running totals: never a sum over open transfers
        self._held = 0
        self.memory_bytes = memory_bytes
        self.spill = spill
        self.spilled = 0  # chunks handed to the spill
        self._in_memory = 0
        self._logged_at: float | None = None
        self._evicted_logged = 0

    def add(self, source: str, message: bytes, now: float) -> tuple[str, bytes] | None:
        """Take one chunk message; return (transfer, payload) when it completes a payload."""
        chunk = decode_chunk(message)
        key = (source, chunk.transfer)
        partial = self._partial.get(key)
        if partial is None:
            partial = self._start(key, chunk, now)
        elif (chunk.count, chunk.size, chunk.sha256) != (
            partial.first.count, partial.first.size, partial.first.sha256
        ):
            self._drop(key)
            raise RemoteProtocolError("chunk disagrees with earlier chunks of its transfer",
                                      chunk.transfer)
        else:
            self._open.touch(key)
        if chunk.index in partial.parts:
            return None  # a QoS 1 redelivery: already have it
        if partial.received + len(chunk.data) > chunk.size:
            self._drop(key)
            raise RemoteProtocolError("chunks carry more bytes than the declared size",
                                      chunk.transfer)
        partial.received += len(chunk.data)
        self._held += len(chunk.data)
        self._keep(key, partial, chunk)
        if len(partial.parts) < chunk.count:
            return None
        try:
            spilled = self.spill.take(key) if self.spill is not None and partial.spilled else {}
        except OSError as exc:  # no ack goes out: the device resends the whole upload
            log.error("chunking: dropped upload %s from %s: its spilled chunks could not "
                      "be read back: %s", chunk.transfer[:8], source, exc)
            self._drop(key)
            return None
        self._drop(key)
        return chunk.transfer, self._finish(chunk, partial, spilled)

    def _keep(self, key: Key, partial: _Partial, chunk: Chunk) -> None:
        """Hold the chunk's data, or hand it to the spill past the memory budget (not
        the chunk that completes its upload: it is read at once)."""
        size = len(chunk.data)
        last = len(partial.parts) + 1 == chunk.count
        if (self.spill is not None and not last and self._in_memory + size > self.memory_bytes
                and self.spill.put(key, chunk.index, chunk.data)):
            partial.parts[chunk.index] = None
            partial.spilled = True
            self.spilled += 1
            return
        partial.parts[chunk.index] = chunk.data
        partial.in_memory += size
        self._in_memory += size

    def _start(self, key: Key, chunk: Chunk, now: float) -> _Partial:
        if chunk.size > self.max_payload:
            raise RemoteProtocolError(f"declared size {chunk.size} exceeds the limit of "
                                      f"{self.max_payload} bytes", chunk.transfer)
        if chunk.count > chunk.size:
            raise RemoteProtocolError("chunk count exceeds the payload size", chunk.transfer)
        source = key[0]
        while self._open.count(source) >= self.max_transfers_per_source:
            self._drop(self._open.idlest_of(source))  # the source replaces its own
        while self._open and (len(self._open) >= self.max_transfers
                              or self._reserved + chunk.size > self.max_total_bytes):
            victim = self._open.victim()
            self._drop(victim)
            self.evicted += 1
            self._log_eviction(victim, now)
        # its header only: the data is kept (or spilled) with the other parts
        partial = _Partial(first=dataclasses.replace(chunk, data=b""), started_at=now)
        self._partial[key] = partial
        self._open.add(key)
        self._reserved += chunk.size
        return partial

    def _drop(self, key: Key) -> None:
        partial = self._partial.pop(key)
        self._open.remove(key)
        self._reserved -= partial.first.size
        self._held -= partial.received
        self._in_memory -= partial.in_memory
        if partial.spilled and self.spill is not None:
            self.spill.discard(key)

    def _log_eviction(self, victim: tuple[str, str], now: float) -> None:
        if self._logged_at is not None and now - self._logged_at < 10.0:
            return
        log.warning("chunking: %d open upload(s) dropped at the limits (%d uploads, %d "
                    "declared bytes) since the last report; the latest from %s",
                    self.evicted - self._evicted_logged, self.max_transfers,
                    self.max_total_bytes, victim[0])
        self._logged_at, self._evicted_logged = now, self.evicted

    @staticmethod
    def _finish(chunk: Chunk, partial: _Partial,
                spilled: dict[int, bytes | memoryview]) -> bytes:
        payload = b"".join(data if (data := partial.parts[i]) is not None else spilled[i]
                           for i in range(chunk.count))
        if len(payload) != chunk.size:
            raise RemoteProtocolError(f"reassembled {len(payload)} bytes, declared "
                                      f"{chunk.size}", chunk.transfer)
        if sha256_hex(payload) != chunk.sha256:
            raise RemoteProtocolError("sha256 of the reassembled payload does not match",
                                      chunk.transfer)
        return payload

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop transfers that stalled for longer than the timeout; return their keys."""
        stale = []
        while (key := self._open.oldest_started()) is not None and \
                now - self._partial[key].started_at > self.timeout_s:
            self._drop(key)
            stale.append(key)
        return stale

    def pending_bytes(self) -> int:
        """Bytes of the uploads in progress received so far (in memory or spilled)."""
        return self._held

    def memory_held(self) -> int:
        """Bytes of the uploads in progress held in memory."""
        return self._in_memory

    def reserved_bytes(self) -> int:
        """Declared sizes of the transfers in progress: what they may grow to."""
        return self._reserved

    def open_count(self) -> int:
        """Transfers in progress."""
        return len(self._open)
