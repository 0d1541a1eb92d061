"""Frames: COBS(header + payload + CRC-16) followed by one 0x00 delimiter.

    header  = version u8 | type u8 | seq u8 | payload length u16 LE
    trailer = CRC-16/CCITT-FALSE over header and payload, u16 LE

A received frame is checked in this order, and the first failure is the error (the C
reference checks in the same order, so both sides agree on every shared vector):
COBS, at least a header and CRC (`Truncated`), declared length over the maximum
(`TooLong`), fewer bytes than declared (`Truncated`), more bytes than declared
(`BadLength`), CRC, version, type.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from firmware_bridge.link.checksums import crc16_ccitt
from firmware_bridge.link.cobs import cobs_decode, cobs_encode, max_encoded_size
from firmware_bridge.link.errors import (
    BadCrc,
    BadLength,
    LinkError,
    TooLong,
    Truncated,
    UnknownType,
    UnknownVersion,
)

LINK_VERSION = 1
DEFAULT_MAX_PAYLOAD = 256  # what a small MCU can hold; HELLO says each end's own limit
HEADER = struct.Struct("<BBBH")
CRC_SIZE = 2


class MsgType(IntEnum):
    HELLO = 0x01
    SAMPLE = 0x02
    PREDICTION = 0x03
    LOG = 0x04
    MODEL_BEGIN = 0x10
    MODEL_CHUNK = 0x11
    MODEL_END = 0x12
    ACK = 0x20
    NACK = 0x21


KNOWN_TYPES = frozenset(int(t) for t in MsgType)


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes
    version: int = LINK_VERSION


def max_frame_size(max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """Bytes on the wire for the largest frame, delimiter included."""
    return max_encoded_size(HEADER.size + max_payload + CRC_SIZE) + 1


def encode_frame(frame: Frame, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """The frame's bytes on the wire, delimiter included."""
    if len(frame.payload) > max_payload:
        raise ValueError(f"payload of {len(frame.payload)} bytes is over the link's "
                         f"maximum of {max_payload}")
    if not (0 <= frame.type <= 0xFF and 0 <= frame.seq <= 0xFF and 0 <= frame.version <= 0xFF):
        raise ValueError(f"version, type and seq must be bytes: {frame}")
    raw = HEADER.pack(frame.version, frame.type, frame.seq, len(frame.payload)) + frame.payload
    raw += struct.pack("<H", crc16_ccitt(raw))
    return cobs_encode(raw) + b"\x00"


def decode_frame(encoded: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """One frame from the bytes between two delimiters (the delimiter not included)."""
    raw = cobs_decode(encoded)
    if len(raw) < HEADER.size + CRC_SIZE:
        raise Truncated(f"{len(raw)} bytes is shorter than a header and a CRC")
    version, msg_type, seq, length = HEADER.unpack_from(raw)
    if length > max_payload:
        raise TooLong(f"declared payload of {length} bytes is over the maximum of "
                      f"{max_payload}")
    actual = len(raw) - HEADER.size - CRC_SIZE
    if actual < length:
        raise Truncated(f"declared payload of {length} bytes but only {actual} arrived")
    if actual > length:
        raise BadLength(f"declared payload of {length} bytes but {actual} arrived")
    (crc,) = struct.unpack_from("<H", raw, len(raw) - CRC_SIZE)
    if crc != crc16_ccitt(raw[:-CRC_SIZE]):
        raise BadCrc(f"CRC mismatch in a frame of type {msg_type:#04x}, seq {seq}")
    if version != LINK_VERSION:
        raise UnknownVersion(f"link version {version}; this end speaks {LINK_VERSION}")
    if msg_type not in KNOWN_TYPES:
        raise UnknownType(f"message type {msg_type:#04x} is not known")
    return Frame(msg_type, seq, bytes(raw[HEADER.size:HEADER.size + length]), version)


class FrameReader:
    """A streaming decoder: feed it any bytes, then take frames one at a time.

    Resynchronises on every 0x00: a bad frame costs only itself. `next_frame()` returns
    a Frame, or None when it needs more bytes, and raises only `LinkError` subclasses,
    one per bad frame (the bad bytes are consumed first, so the next call goes on).
    Memory is bounded: a run longer than the largest frame is reported once as
    `TooLong` and then skipped up to the next delimiter.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._max_encoded = max_frame_size(max_payload) - 1
        self._pending = bytearray()  # bytes since the last delimiter, at most _max_encoded
        self._ready: deque[bytes | LinkError] = deque()
        self._discarding = False

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.find(b"\x00", start)
            piece = data[start:] if end < 0 else data[start:end]
            self._take(piece)
            if end < 0:
                break
            self._delimit()
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if self._discarding:
            return
        room = self._max_encoded - len(self._pending)
        if len(piece) <= room:
            self._pending += piece
            return
        self._pending.clear()
        self._discarding = True
        self._ready.append(TooLong(f"more than {self._max_encoded} bytes without a delimiter"))

    def _delimit(self) -> None:
        if not self._discarding and self._pending:  # empty frames are idle line filler
            self._ready.append(bytes(self._pending))
        self._pending.clear()
        self._discarding = False

    def next_frame(self) -> Frame | None:
        if not self._ready:
            return None
        item = self._ready.popleft()
        if isinstance(item, LinkError):
            raise item
        return decode_frame(item, self.max_payload)

    def frames(self) -> list[Frame | LinkError]:
        """Everything decodable now, bad frames as their errors, in arrival order."""
        out: list[Frame | LinkError] = []
        while self._ready:
            try:
                frame = self.next_frame()
            except LinkError as exc:
                out.append(exc)
                continue
            if frame is not None:
                out.append(frame)
        return out
