"""Pushing one model blob to the MCU: MODEL_BEGIN, MODEL_CHUNKs, MODEL_END, sans-IO.

The push hands out one message at a time and moves on only when the link reports it
delivered, so at most one chunk is in the MCU's hands. It is confirmed only when the
MCU's ACK of MODEL_END carries the CRC-32 it recomputed over its own buffer and that
equals the blob's: the MCU holds exactly these bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from firmware_bridge.link import Ack, Message, ModelBegin, ModelChunk, ModelEnd, crc32

CHUNK_HEADER = 4  # MODEL_CHUNK's offset field
MIN_PUSH_PAYLOAD = 12  # MODEL_BEGIN's payload: a link with less cannot carry a push


def check_model(blob: bytes, version: int) -> None:
    """ValueError unless `blob` can go out as model `version`: MODEL_BEGIN carries both
    as u32, and an empty model is not a model."""
    if not blob:
        raise ValueError("a model push needs a non-empty blob")
    if not 0 <= version <= 0xFFFFFFFF or len(blob) > 0xFFFFFFFF:
        raise ValueError(f"model version {version} and size {len(blob)} must fit in 32 bits")


class PushState(Enum):
    SENDING = "sending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


@dataclass
class ModelPush:
    blob: bytes = field(repr=False)
    version: int
    chunk_size: int  # data bytes per MODEL_CHUNK: the link's max payload minus CHUNK_HEADER
    state: PushState = PushState.SENDING
    reason: str = ""
    crc32: int = 0
    sent_bytes: int = 0
    _next: int = -1  # -1: MODEL_BEGIN is next; else the offset of the next chunk
    _ended: bool = False
    _waiting: bool = False

    def __post_init__(self) -> None:
        check_model(self.blob, self.version)
        if self.chunk_size < 1:
            raise ValueError(f"chunk size {self.chunk_size} leaves no room for model bytes")
        self.crc32 = crc32(self.blob)

    @property
    def done(self) -> bool:
        return self.state is not PushState.SENDING

    def next_message(self) -> Message | None:
        """The next message to send, or None while one is unanswered or when done."""
        if self.done or self._waiting or self._ended:
            return None
        self._waiting = True
        if self._next < 0:
            return ModelBegin(len(self.blob), self.crc32, self.version)
        if self._next < len(self.blob):
            return ModelChunk(self._next, self.blob[self._next:self._next + self.chunk_size])
        self._ended = True
        return ModelEnd(self.version)

    def on_delivered(self, message: Message, ack: Ack) -> None:
        self._waiting = False
        if isinstance(message, ModelBegin):
            self._next = 0
        elif isinstance(message, ModelChunk):
            self._next = message.offset + len(message.data)
            self.sent_bytes = self._next
        elif isinstance(message, ModelEnd):
            if ack.detail == self.crc32:
                self.state = PushState.CONFIRMED
            else:
                self._fail(f"the MCU computed CRC-32 {ack.detail:08x}, the model's is "
                           f"{self.crc32:08x}")

    def on_failed(self, message: Message, reason: str) -> None:
        self._waiting = False
        self._fail(f"{type(message).__name__} failed: {reason}")

    def _fail(self, reason: str) -> None:
        self.state = PushState.FAILED
        self.reason = reason
