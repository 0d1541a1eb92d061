"""The serial link between an MCU and the bridge: frames, messages, a reliable endpoint.

Pure Python, no numpy: the same code checks the C reference in the tests.
"""

from firmware_bridge.link.checksums import crc16_ccitt, crc32
from firmware_bridge.link.cobs import cobs_decode, cobs_encode, max_encoded_size
from firmware_bridge.link.endpoint import (
    Delivered,
    Failed,
    FrameError,
    LinkEndpoint,
    LinkStats,
    Received,
    RetryPolicy,
)
from firmware_bridge.link.errors import (
    BadCobs,
    BadCrc,
    BadLength,
    BadPayload,
    LinkError,
    TooLong,
    Truncated,
    UnknownType,
    UnknownVersion,
)
from firmware_bridge.link.frames import (
    DEFAULT_MAX_PAYLOAD,
    LINK_VERSION,
    Frame,
    FrameReader,
    MsgType,
    decode_frame,
    encode_frame,
    max_frame_size,
)
from firmware_bridge.link.messages import (
    Ack,
    Capability,
    Dtype,
    Hello,
    Log,
    LogLevel,
    Message,
    ModelBegin,
    ModelChunk,
    ModelEnd,
    Nack,
    NackReason,
    Prediction,
    Sample,
    decode_message,
    describe,
    encode_payload,
    message_type,
)


def encode_message(message: Message, seq: int = 0,
                   max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """A message as one frame on the wire (delimiter included)."""
    return encode_frame(Frame(message_type(message), seq, encode_payload(message)),
                        max_payload)


__all__ = [
    "DEFAULT_MAX_PAYLOAD", "LINK_VERSION", "Ack", "BadCobs", "BadCrc", "BadLength",
    "BadPayload", "Capability", "Delivered", "Dtype", "Failed", "Frame", "FrameError",
    "FrameReader", "Hello", "LinkEndpoint", "LinkError", "LinkStats", "Log", "LogLevel",
    "Message", "ModelBegin", "ModelChunk", "ModelEnd", "MsgType", "Nack", "NackReason",
    "Prediction", "Received", "RetryPolicy", "Sample", "TooLong", "Truncated", "UnknownType",
    "UnknownVersion", "cobs_decode", "cobs_encode", "crc16_ccitt", "crc32", "decode_frame",
    "decode_message", "describe", "encode_frame", "encode_message", "encode_payload",
    "max_encoded_size", "max_frame_size", "message_type",
]
