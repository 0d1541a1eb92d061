"""Link test vectors shared by the Python side and the C reference.

`link_vectors.txt` is the contract; `python_result` computes what the Python link
gives for one vector, and firmware/link_vectors.c prints what C gives, in the same
text form (see the format at the top of link_vectors.c).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.link import (
    Frame,
    FrameReader,
    LinkError,
    cobs_decode,
    cobs_encode,
    crc16_ccitt,
    crc32,
    decode_message,
    describe,
    encode_frame,
    encode_message,
)

VECTOR_FILE = Path(__file__).with_name("link_vectors.txt")
ARGS_BEFORE_EXPECTED = {"frame_encode": 3}  # every other kind has one argument


@dataclass(frozen=True)
class Vector:
    kind: str
    name: str
    args: tuple[str, ...]
    expected: str

    def line(self) -> str:
        return " ".join((self.kind, self.name, *self.args, self.expected))


def load_vectors(path: Path = VECTOR_FILE) -> list[Vector]:
    vectors = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text or text.startswith("#"):
            continue
        kind, name, rest = text.split(" ", 2)
        count = ARGS_BEFORE_EXPECTED.get(kind, 1)
        parts = rest.split(" ", count)
        if len(parts) != count + 1:
            raise ValueError(f"{path}:{number}: {kind} needs {count} arguments and a result")
        vectors.append(Vector(kind, name, tuple(parts[:count]), parts[count]))
    return vectors


def unhex(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)


def hexed(data: bytes) -> str:
    return data.hex() if data else "-"


def python_result(vector: Vector) -> str:
    """What the Python link computes for `vector`, in the vector file's text form."""
    data = unhex(vector.args[-1])
    try:
        return _RUNNERS[vector.kind](vector, data)
    except LinkError as exc:
        return f"error:{exc.code}"


def _frame_encode(vector: Vector, payload: bytes) -> str:
    try:
        wire = encode_frame(Frame(int(vector.args[0]), int(vector.args[1]), payload))
    except ValueError:
        return "error:too_long"
    return hexed(wire)


def _frame_stream(vector: Vector, data: bytes) -> str:
    reader = FrameReader()
    reader.feed(data)
    results = []
    for item in reader.frames():
        if isinstance(item, LinkError):
            results.append(f"error:{item.code}")
        else:
            results.append(f"frame:{item.type}:{item.seq}:{hexed(item.payload)}")
    return ";".join(results) or "-"


def _message(vector: Vector, data: bytes) -> str:
    reader = FrameReader()
    reader.feed(data)
    if not data.endswith(b"\x00") or data.count(0) != 1:
        return "error:vector_is_not_one_frame"
    frame = reader.next_frame()
    assert frame is not None
    message = decode_message(frame)
    text = describe(message)
    if encode_message(message, frame.seq) != data:
        text += " reencode_mismatch"
    return text


_RUNNERS = {
    "crc16": lambda v, d: f"{crc16_ccitt(d):04x}",
    "crc32": lambda v, d: f"{crc32(d):08x}",
    "cobs_encode": lambda v, d: hexed(cobs_encode(d)),
    "cobs_decode": lambda v, d: hexed(cobs_decode(d)),
    "frame_encode": _frame_encode,
    "frame_stream": _frame_stream,
    "message": _message,
}
