"""COBS, CRCs and frames of the serial link, with values worked out independently."""

from __future__ import annotations

import subprocess
import sys

import pytest

from firmware_bridge.link import (
    BadCobs,
    BadCrc,
    BadLength,
    Frame,
    FrameReader,
    LinkError,
    TooLong,
    Truncated,
    UnknownType,
    UnknownVersion,
    cobs_decode,
    cobs_encode,
    crc16_ccitt,
    crc32,
    decode_frame,
    encode_frame,
    max_encoded_size,
    max_frame_size,
)

RUN_254 = bytes(range(1, 255))

# Wikipedia, "Consistent Overhead Byte Stuffing", examples 1-11 (without the delimiter).
WIKIPEDIA = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (RUN_254, b"\xff" + RUN_254),
    (b"\x00" + RUN_254, b"\x01\xff" + RUN_254),
    (RUN_254 + b"\xff", b"\xff" + RUN_254 + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), WIKIPEDIA)
def test_cobs_matches_the_published_examples(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 507, 508, 509, 1000])
@pytest.mark.parametrize("zeros", ["none", "every_7th", "all"])
def test_cobs_round_trips_and_stays_within_its_bound(n: int, zeros: str) -> None:
    raw = bytes(0 if zeros == "all" or (zeros == "every_7th" and i % 7 == 0)
                else (i % 255) + 1 for i in range(n))
    encoded = cobs_encode(raw)
    assert 0 not in encoded
    assert len(encoded) <= max_encoded_size(n)
    assert cobs_decode(encoded) == raw


@pytest.mark.parametrize("bad", [b"\x03\x11\x00", b"\x05\x11\x22", b"\x00", b"\xff\x01"])
def test_cobs_refuses_what_no_encoder_makes(bad: bytes) -> None:
    with pytest.raises(BadCobs):
        cobs_decode(bad)


def test_crc_check_values() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1  # the catalogue's CRC-16/CCITT-FALSE check
    assert crc16_ccitt(b"") == 0xFFFF
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"6789", crc32(b"12345")) == crc32(b"123456789")


def test_a_frame_is_header_payload_crc_in_cobs() -> None:
    wire = encode_frame(Frame(type=0x04, seq=5, payload=b"\x01hi"))
    # raw: version 1, type 4, seq 5, length 3 (LE), payload, CRC LE
    raw = bytes([1, 4, 5, 3, 0, 1, 0x68, 0x69])
    crc = crc16_ccitt(raw)
    assert wire == cobs_encode(raw + bytes([crc & 0xFF, crc >> 8])) + b"\x00"
    assert decode_frame(wire[:-1]) == Frame(4, 5, b"\x01hi")


def test_largest_frame_fits_its_bound() -> None:
    payload = bytes((i % 255) + 1 for i in range(256))
    wire = encode_frame(Frame(0x11, 1, payload))
    assert len(wire) <= max_frame_size(256)
    with pytest.raises(ValueError, match="over the link's maximum"):
        encode_frame(Frame(0x11, 1, payload + b"\x01"))


def _frame_bytes(version: int, msg_type: int, seq: int, declared: int, payload: bytes,
                 crc_xor: int = 0) -> bytes:
    raw = bytes([version, msg_type, seq, declared & 0xFF, declared >> 8]) + payload
    crc = crc16_ccitt(raw) ^ crc_xor
    return cobs_encode(raw + bytes([crc & 0xFF, crc >> 8]))


@pytest.mark.parametrize(("encoded", "error"), [
    (_frame_bytes(1, 4, 0, 2, b"\x01h", crc_xor=1), BadCrc),
    (_frame_bytes(1, 4, 0, 5, b"\x01h"), Truncated),
    (cobs_encode(b"\x01\x04\x00\x00"), Truncated),
    (_frame_bytes(1, 4, 0, 1, b"\x01h"), BadLength),
    (_frame_bytes(1, 4, 0, 257, b"\x01h"), TooLong),
    (_frame_bytes(9, 4, 0, 2, b"\x01h"), UnknownVersion),
    (_frame_bytes(1, 0x55, 0, 2, b"\x01h"), UnknownType),
    (b"\x07\x01", BadCobs),
])
def test_bad_frames_raise_their_own_error(encoded: bytes, error: type[LinkError]) -> None:
    with pytest.raises(error):
        decode_frame(encoded)


def test_reader_resynchronises_after_garbage_and_bad_frames() -> None:
    good = encode_frame(Frame(0x04, 1, b"\x01ok"))
    corrupt = bytearray(good)
    corrupt[6] ^= 0x20
    reader = FrameReader()
    stream = b"\xaa\xbb" + b"\x00" + bytes(corrupt) + b"\x00\x00" + good
    for i in range(0, len(stream), 3):  # arrives in pieces, split anywhere
        reader.feed(stream[i:i + 3])
    results = reader.frames()
    assert [type(r) for r in results] == [BadCobs, BadCrc, Frame]
    assert results[-1] == Frame(0x04, 1, b"\x01ok")


def test_reader_reports_an_over_long_run_once_and_bounds_memory() -> None:
    reader = FrameReader()
    good = encode_frame(Frame(0x04, 2, b"\x01ok"))
    reader.feed(b"\x55" * 10_000)
    reader.feed(b"\x55" * 10_000 + b"\x00" + good)
    results = reader.frames()
    assert [type(r) for r in results] == [TooLong, Frame]
    assert len(reader._pending) == 0


def test_reader_waits_for_the_delimiter() -> None:
    reader = FrameReader()
    good = encode_frame(Frame(0x04, 3, b"\x01ok"))
    reader.feed(good[:-1])
    assert reader.next_frame() is None
    reader.feed(b"\x00")
    assert reader.next_frame() == Frame(0x04, 3, b"\x01ok")


def test_the_link_package_imports_without_numpy():
    """The protocol must run where numpy does not (and the C side's tests use it)."""
    code = "import sys, firmware_bridge.link; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
