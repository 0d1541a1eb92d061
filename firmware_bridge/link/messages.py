"""The messages the MCU and the bridge exchange, and their payload layouts (little-endian).

    HELLO        fw_version u32 | capabilities u32 | max_payload u16 | model_capacity u32
                 | id_len u8 | device_id (1..32 printable ASCII bytes)
    SAMPLE       dtype u8 (1 int16, 2 float32) | flags u8 (bit 0: labelled) | label u16
                 | ndim u8 (1..4) | shape u16 * ndim | values (prod(shape) of dtype)
    PREDICTION   model_version u32 | class u16 | score f32
    LOG          level u8 (0 debug .. 3 error) | UTF-8 text (rest of the payload)
    MODEL_BEGIN  size u32 | crc32 u32 | version u32
    MODEL_CHUNK  offset u32 | bytes (at least one)
    MODEL_END    version u32
    ACK          seq u8 | detail u32   (detail: for MODEL_END, the CRC-32 the MCU computed)
    NACK         seq u8 | reason u8 (non-zero) | detail u32

Layouts are exact: unknown flag bits, a label on an unlabelled sample, or trailing bytes
are `BadPayload`, so re-encoding a decoded message gives the same bytes.
`describe()` is the canonical text form the shared vectors and the C test program use.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from firmware_bridge.link.errors import BadPayload, UnknownType
from firmware_bridge.link.frames import Frame, MsgType

MAX_DEVICE_ID = 32
MAX_DIMS = 4


class Capability(IntEnum):
    """HELLO's capabilities bitmask: what this end can do."""

    SAMPLES = 1 << 0  # streams SAMPLE windows
    LABELS = 1 << 1  # its samples can carry labels
    MODEL_UPDATE = 1 << 2  # accepts MODEL_BEGIN/CHUNK/END
    INFERENCE = 1 << 3  # sends PREDICTION
    LOGS = 1 << 4  # sends LOG


class Dtype(IntEnum):
    INT16 = 1
    FLOAT32 = 2


DTYPE_FORMAT = {Dtype.INT16: "h", Dtype.FLOAT32: "f"}


class LogLevel(IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


class NackReason(IntEnum):
    """Why a message was refused. Only BAD_FRAME and BUSY are worth a resend."""

    BAD_FRAME = 1  # failed to decode (CRC, COBS, ...): resend it
    BAD_PAYLOAD = 2
    UNSUPPORTED = 3  # a type this end does not handle
    NO_SPACE = 4  # model larger than the MCU's buffer
    BAD_OFFSET = 5  # chunk not where the next byte belongs
    BAD_CHECKSUM = 6  # whole model's CRC-32 or size did not match
    NOT_READY = 7  # chunk or end without a begin
    BUSY = 8  # try again later


RETRYABLE_NACKS = frozenset({NackReason.BAD_FRAME, NackReason.BUSY})


@dataclass(frozen=True)
class Hello:
    device_id: str
    firmware_version: int
    capabilities: int
    max_payload: int
    model_capacity: int = 0  # bytes of model the device can hold; 0: none


@dataclass(frozen=True)
class Sample:
    """A sensor window: raw little-endian values, their dtype and shape, maybe a label."""

    dtype: Dtype
    shape: tuple[int, ...]
    data: bytes
    label: int | None = None

    @classmethod
    def from_values(cls, values: list[float] | list[int], shape: tuple[int, ...],
                    dtype: Dtype = Dtype.INT16, label: int | None = None) -> Sample:
        fmt = "<" + DTYPE_FORMAT[Dtype(dtype)] * len(values)
        try:
            data = struct.pack(fmt, *values)
        except struct.error as exc:
            raise ValueError(f"values do not fit {Dtype(dtype).name}: {exc}") from None
        return cls(Dtype(dtype), tuple(shape), data, label)

    def values(self) -> list[float] | list[int]:
        count = len(self.data) // struct.calcsize(DTYPE_FORMAT[self.dtype])
        return list(struct.unpack("<" + DTYPE_FORMAT[self.dtype] * count, self.data))


@dataclass(frozen=True)
class Prediction:
    model_version: int
    class_index: int
    score: float


@dataclass(frozen=True)
class Log:
    level: int
    text: str


@dataclass(frozen=True)
class ModelBegin:
    size: int
    crc32: int
    version: int


@dataclass(frozen=True)
class ModelChunk:
    offset: int
    data: bytes


@dataclass(frozen=True)
class ModelEnd:
    version: int


@dataclass(frozen=True)
class Ack:
    seq: int
    detail: int = 0


@dataclass(frozen=True)
class Nack:
    seq: int
    reason: int
    detail: int = 0


Message = Hello | Sample | Prediction | Log | ModelBegin | ModelChunk | ModelEnd | Ack | Nack

TYPE_OF: dict[type, MsgType] = {
    Hello: MsgType.HELLO, Sample: MsgType.SAMPLE, Prediction: MsgType.PREDICTION,
    Log: MsgType.LOG, ModelBegin: MsgType.MODEL_BEGIN, ModelChunk: MsgType.MODEL_CHUNK,
    ModelEnd: MsgType.MODEL_END, Ack: MsgType.ACK, Nack: MsgType.NACK,
}
_HELLO = struct.Struct("<IIHIB")
_SAMPLE_HEAD = struct.Struct("<BBHB")
_PREDICTION = struct.Struct("<IHf")
_MODEL_BEGIN = struct.Struct("<III")
_U32 = struct.Struct("<I")
_ACK = struct.Struct("<BI")
_NACK = struct.Struct("<BBI")


def message_type(msg: Message) -> MsgType:
    return TYPE_OF[type(msg)]


# ---------------------------------------------------------------- encoding
def encode_payload(msg: Message) -> bytes:
    """The payload bytes of `msg`; ValueError when a field does not fit its layout."""
    try:
        return _ENCODERS[type(msg)](msg)
    except struct.error as exc:
        raise ValueError(f"{type(msg).__name__}: a field is out of range ({exc})") from None


def _encode_hello(m: Hello) -> bytes:
    ident = m.device_id.encode("ascii", "replace")
    if not _valid_device_id(ident):
        raise ValueError(f"device id {m.device_id!r}: need 1..{MAX_DEVICE_ID} printable "
                         f"ASCII characters without spaces")
    return _HELLO.pack(m.firmware_version, m.capabilities, m.max_payload, m.model_capacity,
                       len(ident)) + ident


def _encode_sample(m: Sample) -> bytes:
    dtype = Dtype(m.dtype)
    if not 1 <= len(m.shape) <= MAX_DIMS or any(not 1 <= d <= 0xFFFF for d in m.shape):
        raise ValueError(f"sample shape {m.shape}: need 1..{MAX_DIMS} dimensions of "
                         f"1..65535")
    if len(m.data) != math.prod(m.shape) * struct.calcsize(DTYPE_FORMAT[dtype]):
        raise ValueError(f"sample data is {len(m.data)} bytes; shape {m.shape} of "
                         f"{dtype.name} needs {math.prod(m.shape)} values")
    flags, label = (0, 0) if m.label is None else (1, m.label)
    head = _SAMPLE_HEAD.pack(dtype, flags, label, len(m.shape))
    return head + struct.pack(f"<{len(m.shape)}H", *m.shape) + m.data


def _encode_log(m: Log) -> bytes:
    if not 0 <= m.level <= LogLevel.ERROR:
        raise ValueError(f"log level {m.level} is not 0..3")
    return bytes([m.level]) + m.text.encode("utf-8")


def _encode_chunk(m: ModelChunk) -> bytes:
    if not m.data:
        raise ValueError("a model chunk needs at least one byte")
    return _U32.pack(m.offset) + m.data


def _encode_nack(m: Nack) -> bytes:
    if m.reason == 0:
        raise ValueError("a NACK needs a non-zero reason")
    return _NACK.pack(m.seq, m.reason, m.detail)


# Each encoder takes the message class it is filed under.
_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Hello: _encode_hello,
    Sample: _encode_sample,
    Prediction: lambda m: _PREDICTION.pack(m.model_version, m.class_index, m.score),
    Log: _encode_log,
    ModelBegin: lambda m: _MODEL_BEGIN.pack(m.size, m.crc32, m.version),
    ModelChunk: _encode_chunk,
    ModelEnd: lambda m: _U32.pack(m.version),
    Ack: lambda m: _ACK.pack(m.seq, m.detail),
    Nack: _encode_nack,
}


# ---------------------------------------------------------------- decoding
def decode_message(frame: Frame) -> Message:
    """The message in a frame; `BadPayload` when its payload does not fit the layout."""
    decoder = _DECODERS.get(frame.type)
    if decoder is None:
        raise UnknownType(f"message type {frame.type:#04x} is not known")
    return decoder(frame.payload)


def _exact(payload: bytes, layout: struct.Struct, name: str) -> tuple:
    if len(payload) != layout.size:
        raise BadPayload(f"{name} payload is {len(payload)} bytes; its layout has "
                         f"{layout.size}")
    return layout.unpack(payload)


def _valid_device_id(ident: bytes) -> bool:
    return 1 <= len(ident) <= MAX_DEVICE_ID and all(0x21 <= b <= 0x7E for b in ident)


def _decode_hello(p: bytes) -> Hello:
    if len(p) < _HELLO.size:
        raise BadPayload(f"HELLO payload is {len(p)} bytes, shorter than its fixed fields")
    fw, caps, max_payload, capacity, id_len = _HELLO.unpack_from(p)
    ident = p[_HELLO.size:]
    if len(ident) != id_len or not _valid_device_id(ident):
        raise BadPayload("HELLO device id must be 1..32 printable ASCII bytes, as declared")
    return Hello(ident.decode("ascii"), fw, caps, max_payload, capacity)


def _decode_sample(p: bytes) -> Sample:
    if len(p) < _SAMPLE_HEAD.size:
        raise BadPayload(f"SAMPLE payload is {len(p)} bytes, shorter than its header")
    dtype, flags, label, ndim = _SAMPLE_HEAD.unpack_from(p)
    if dtype not in (Dtype.INT16, Dtype.FLOAT32):
        raise BadPayload(f"SAMPLE dtype {dtype} is not 1 (int16) or 2 (float32)")
    if flags & ~1 or (not flags and label):
        raise BadPayload(f"SAMPLE flags {flags:#04x} / label {label} are not valid")
    if not 1 <= ndim <= MAX_DIMS or len(p) < _SAMPLE_HEAD.size + 2 * ndim:
        raise BadPayload(f"SAMPLE has {ndim} dimensions; need 1..{MAX_DIMS}, all present")
    shape = struct.unpack_from(f"<{ndim}H", p, _SAMPLE_HEAD.size)
    data = p[_SAMPLE_HEAD.size + 2 * ndim:]
    if 0 in shape or len(data) != math.prod(shape) * (2 if dtype == Dtype.INT16 else 4):
        raise BadPayload(f"SAMPLE shape {shape} does not match its {len(data)} data bytes")
    return Sample(Dtype(dtype), shape, data, label if flags else None)


def _decode_log(p: bytes) -> Log:
    if not p or p[0] > LogLevel.ERROR:
        raise BadPayload("LOG needs a level 0..3 first")
    return Log(p[0], p[1:].decode("utf-8", "replace"))


def _decode_chunk(p: bytes) -> ModelChunk:
    if len(p) <= _U32.size:
        raise BadPayload("MODEL_CHUNK needs an offset and at least one byte")
    return ModelChunk(_U32.unpack_from(p)[0], p[_U32.size:])


def _decode_nack(p: bytes) -> Nack:
    seq, reason, detail = _exact(p, _NACK, "NACK")
    if reason == 0:
        raise BadPayload("NACK reason 0 is not a reason")
    return Nack(seq, reason, detail)


# Keyed by MsgType, an IntEnum: a frame's plain int type finds its decoder.
_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MsgType.HELLO: _decode_hello,
    MsgType.SAMPLE: _decode_sample,
    MsgType.PREDICTION: lambda p: Prediction(*_exact(p, _PREDICTION, "PREDICTION")),
    MsgType.LOG: _decode_log,
    MsgType.MODEL_BEGIN: lambda p: ModelBegin(*_exact(p, _MODEL_BEGIN, "MODEL_BEGIN")),
    MsgType.MODEL_CHUNK: _decode_chunk,
    MsgType.MODEL_END: lambda p: ModelEnd(*_exact(p, _U32, "MODEL_END")),
    MsgType.ACK: lambda p: Ack(*_exact(p, _ACK, "ACK")),
    MsgType.NACK: _decode_nack,
}


# ---------------------------------------------------------------- canonical text
def describe(msg: Message) -> str:
    """One line naming every field; integers in decimal, bytes and text in hex.

    The C test program prints the same text for the same message (fl_describe in
    link_vectors.c), which is how the vectors compare the two decoders.
    """
    if isinstance(msg, Hello):
        return (f"hello fw={msg.firmware_version} caps={msg.capabilities} "
                f"max_payload={msg.max_payload} model_capacity={msg.model_capacity} "
                f"id={msg.device_id.encode('ascii').hex()}")
    if isinstance(msg, Sample):
        label = "none" if msg.label is None else str(msg.label)
        shape = "x".join(str(d) for d in msg.shape)
        return f"sample dtype={int(msg.dtype)} shape={shape} label={label} data={msg.data.hex()}"
    if isinstance(msg, Prediction):
        bits = struct.pack("<f", msg.score)[::-1].hex()
        return f"prediction version={msg.model_version} class={msg.class_index} score={bits}"
    if isinstance(msg, Log):
        return f"log level={msg.level} text={msg.text.encode('utf-8').hex()}"
    if isinstance(msg, ModelBegin):
        return f"model_begin size={msg.size} crc32={msg.crc32:08x} version={msg.version}"
    if isinstance(msg, ModelChunk):
        return f"model_chunk offset={msg.offset} data={msg.data.hex()}"
    if isinstance(msg, ModelEnd):
        return f"model_end version={msg.version}"
    if isinstance(msg, Ack):
        return f"ack seq={msg.seq} detail={msg.detail}"
    return f"nack seq={msg.seq} reason={msg.reason} detail={msg.detail}"
