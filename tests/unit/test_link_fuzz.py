"""Random bytes into the decoder: only the link's own errors, and it always finishes."""

from __future__ import annotations

import random

from firmware_bridge.link import (
    Frame,
    FrameReader,
    LinkEndpoint,
    LinkError,
    decode_message,
    encode_frame,
)

ROUNDS = 300


def _drain(reader: FrameReader, limit: int) -> tuple[int, int]:
    """Take frames until the reader needs data; returns (frames, errors)."""
    frames = errors = 0
    for _ in range(limit):
        try:
            frame = reader.next_frame()
        except LinkError:
            errors += 1
            continue
        if frame is None:
            return frames, errors
        frames += 1
        try:
            decode_message(frame)
        except LinkError:
            errors += 1
    raise AssertionError(f"reader still had frames after {limit} calls: it loops")


def test_random_bytes_give_only_link_errors() -> None:
    rng = random.Random(1234)
    seen_errors = 0
    for _ in range(ROUNDS):
        reader = FrameReader()
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600)))
        reader.feed(data)
        # every call either consumes a delimited piece or returns None
        _, errors = _drain(reader, limit=data.count(0) + 2)
        seen_errors += errors
    assert seen_errors > 0  # the fuzz did reach the error paths


def test_mutated_valid_frames_give_only_link_errors() -> None:
    """Frames with bytes flipped, cut or inserted: near-valid input reaches deeper code."""
    rng = random.Random(99)
    decoded = errors = 0
    for i in range(ROUNDS):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        wire = bytearray(encode_frame(Frame(rng.choice([1, 2, 3, 4, 0x10, 0x11, 0x12, 0x20,
                                                        0x21]), i & 0xFF, payload)))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(wire))
            action = rng.choice(["flip", "cut", "insert"])
            if action == "flip":
                wire[pos] ^= 1 << rng.randrange(8)
            elif action == "cut":
                del wire[pos]
            else:
                wire.insert(pos, rng.getrandbits(8))
        reader = FrameReader()
        reader.feed(bytes(wire) + b"\x00")
        frames, errs = _drain(reader, limit=len(wire) + 2)
        decoded += frames
        errors += errs
    assert errors > ROUNDS // 2


def test_an_endpoint_survives_random_bytes() -> None:
    """The whole receive path, answers included, on noise."""
    rng = random.Random(7)
    endpoint = LinkEndpoint()
    now = 0.0
    for _ in range(ROUNDS):
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        endpoint.receive_data(noise, now)
        endpoint.data_to_send()
        now += 0.01
    assert sum(endpoint.stats.errors.values()) > 0
