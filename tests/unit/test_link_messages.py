"""Message payloads: round trips of every type and clear refusals of bad fields."""

from __future__ import annotations

import struct

import pytest

from firmware_bridge.link import (
    Ack,
    BadPayload,
    Dtype,
    Frame,
    FrameReader,
    Hello,
    Log,
    ModelBegin,
    ModelChunk,
    ModelEnd,
    MsgType,
    Nack,
    NackReason,
    Prediction,
    Sample,
    decode_message,
    describe,
    encode_message,
    encode_payload,
)

MESSAGES = [
    Hello("stm32-node.7", 0x00020001, 0b11111, 256, 48_000),
    Sample.from_values([1, -2, 3, -4, 5, -6], (3, 2), Dtype.INT16, label=4),
    Sample.from_values([0.5, -1.25], (2,), Dtype.FLOAT32),
    Prediction(7, 3, 0.5),
    Log(2, "battery low: 3.3 V"),
    ModelBegin(4096, 0x89ABCDEF, 7),
    ModelChunk(1024, b"\x00\x01\x02\xff"),
    ModelEnd(7),
    Ack(3, 0x89ABCDEF),
    Nack(4, NackReason.NO_SPACE, 48_000),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_frame(message) -> None:
    reader = FrameReader()
    reader.feed(encode_message(message, seq=42))
    frame = reader.next_frame()
    assert frame is not None and frame.seq == 42
    assert decode_message(frame) == message


def test_sample_values_come_back_as_numbers() -> None:
    sample = Sample.from_values([100, -100, 32767], (3,), Dtype.INT16)
    assert sample.data == struct.pack("<3h", 100, -100, 32767)
    assert sample.values() == [100, -100, 32767]


def test_describe_names_every_field() -> None:
    text = describe(Sample.from_values([1, 2], (1, 2), Dtype.INT16, label=9))
    assert text == "sample dtype=1 shape=1x2 label=9 data=01000200"
    assert describe(Prediction(1, 2, 1.0)) == "prediction version=1 class=2 score=3f800000"


@pytest.mark.parametrize(("message", "problem"), [
    (Hello("has space", 1, 0, 256), "device id"),
    (Hello("x" * 33, 1, 0, 256), "device id"),
    (Sample(Dtype.INT16, (2, 2), b"\x00" * 6), "needs 4 values"),
    (Sample(Dtype.INT16, (1, 1, 1, 1, 1), b"\x00\x00"), "dimensions"),
    (Log(7, "x"), "log level"),
    (ModelChunk(0, b""), "at least one byte"),
    (Nack(1, 0), "non-zero reason"),
    (Prediction(1, 70_000, 0.5), "out of range"),
])
def test_encoding_refuses_fields_that_do_not_fit(message, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_payload(message)


def test_from_values_refuses_values_outside_the_dtype() -> None:
    with pytest.raises(ValueError, match="INT16"):
        Sample.from_values([40_000], (1,), Dtype.INT16)


@pytest.mark.parametrize(("msg_type", "payload"), [
    (MsgType.SAMPLE, b"\x01\x00\x00\x00\x01\x03\x00" + b"\x00" * 4),  # 3 values, 2 present
    (MsgType.SAMPLE, b"\x02\x01\x00\x00\x01\x01\x00" + b"\x00" * 2),  # float32 short
    (MsgType.HELLO, struct.pack("<IIHIB", 1, 0, 256, 0, 2) + b"\x00\x01"),
    (MsgType.MODEL_END, b"\x01\x00\x00\x00\x00"),
    (MsgType.ACK, b""),
])
def test_decoding_refuses_payloads_that_do_not_fit(msg_type: int, payload: bytes) -> None:
    with pytest.raises(BadPayload):
        decode_message(Frame(msg_type, 0, payload))
