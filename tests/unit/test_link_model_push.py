"""The model push state machine, by hand: one message at a time, confirmed by CRC-32."""

from __future__ import annotations

import zlib

import pytest

from firmware_bridge.link import Ack, ModelBegin, ModelChunk, ModelEnd
from firmware_bridge.model_push import ModelPush, PushState


def _drive(push: ModelPush, end_detail: int | None = None) -> list:
    sent = []
    while (message := push.next_message()) is not None:
        assert push.next_message() is None  # nothing more until this one is answered
        sent.append(message)
        detail = push.crc32 if end_detail is None else end_detail
        push.on_delivered(message, Ack(0, detail if isinstance(message, ModelEnd) else 0))
    return sent


def test_a_push_sends_begin_chunks_end_and_is_confirmed_by_the_crc():
    blob = bytes(range(256)) * 3 + b"tail"
    push = ModelPush(blob, version=9, chunk_size=100)
    sent = _drive(push)
    assert sent[0] == ModelBegin(len(blob), zlib.crc32(blob), 9)
    chunks = sent[1:-1]
    assert [c.offset for c in chunks] == list(range(0, len(blob), 100))
    assert b"".join(c.data for c in chunks) == blob
    assert all(isinstance(c, ModelChunk) and len(c.data) <= 100 for c in chunks)
    assert sent[-1] == ModelEnd(9)
    assert push.state is PushState.CONFIRMED and push.sent_bytes == len(blob)


def test_a_wrong_crc_from_the_mcu_fails_the_push():
    push = ModelPush(b"abc" * 10, version=1, chunk_size=8)
    _drive(push, end_detail=0x1234)
    assert push.state is PushState.FAILED
    assert "00001234" in push.reason


def test_a_failed_message_fails_the_push_and_stops_it():
    push = ModelPush(b"x" * 50, version=1, chunk_size=10)
    begin = push.next_message()
    push.on_delivered(begin, Ack(0))
    chunk = push.next_message()
    push.on_failed(chunk, "no answer after 6 tries")
    assert push.state is PushState.FAILED and "ModelChunk failed" in push.reason
    assert push.next_message() is None


@pytest.mark.parametrize(("blob", "version", "chunk"), [
    (b"", 1, 10), (b"x", -1, 10), (b"x", 1, 0), (b"x", 2**32, 10)])
def test_bad_pushes_are_refused(blob, version, chunk):
    with pytest.raises(ValueError):
        ModelPush(blob, version, chunk)
