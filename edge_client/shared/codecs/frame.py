"""The frame around an encoded vector's payload: header, body, crc32 (pipeline.py).

Two layouts. Version 1 (model deltas, and updates from older devices) is a fixed 32-byte
header of u32/u64 fields and a zlib stream. Version 2 (updates since the lean update
envelope, docs/protocol.md) carries the same facts in about 10 bytes: the three codes in
one byte, varints for the sizes, a raw deflate stream (the frame's crc32 already guards
it) whose index set and values are separate deflate blocks, and the seed folded into the
crc32 instead of sent: both sides derive it, so a blob decoded under another seed fails
its check just as a version 1 seed mismatch did.

Version 2 layout (varints are LEB128):

    1 byte   format version (2)
    1 byte   codes: sparsify | quantize << 2 | compress << 5
    varints  block_size, n, k, payload length before compression
    4 bytes  random-k only: crc32 of the random-k indices (u32)
    ...      body: the payload, raw-deflated when compress is "zlib"
    4 bytes  crc32 of the seed (u64) followed by every byte before this field
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import astuple, dataclass

from edge_client.shared.codecs.config import COMPRESSORS, QUANTIZERS, SPARSIFIERS
from edge_client.shared.protocol.errors import RemoteProtocolError

FORMAT_VERSION = 1
LEAN_FORMAT_VERSION = 2
FORMATS = (FORMAT_VERSION, LEAN_FORMAT_VERSION)
HEADER = struct.Struct("<BBBBIIIQII")
TRAILER_SIZE = 4
ZLIB_LEVEL = 6
RANDK = SPARSIFIERS.index("randk")
_SEED = struct.Struct("<Q")
_MAX_VARINT = 5  # every varint field is below 2**32


@dataclass(frozen=True)
class Header:
    version: int
    sparsify: int
    quantize: int
    compress: int
    block_size: int
    n: int
    k: int
    seed: int
    index_check: int
    payload_len: int


def seal(header: Header, payload: bytes, split: int = 0) -> bytes:
    """The whole blob: header, (compressed) body, crc32, in `header.version`'s layout.
    `split`: where the payload's index set ends and its values begin (version 2 deflates
    them as separate blocks, each with its own code tables: about 7% fewer bytes for a
    top-k update; still one stream that any inflater reads)."""
    zlib_on = COMPRESSORS[header.compress] == "zlib"
    if header.version == FORMAT_VERSION:
        body = zlib.compress(payload, ZLIB_LEVEL) if zlib_on else payload
        framed = HEADER.pack(*astuple(header)) + body
        return framed + zlib.crc32(framed).to_bytes(TRAILER_SIZE, "little")
    if header.version != LEAN_FORMAT_VERSION:
        raise ValueError(f"unknown blob format {header.version}")
    codes = header.sparsify | header.quantize << 2 | header.compress << 5
    head = bytes([header.version, codes]) + b"".join(
        _varint(v) for v in (header.block_size, header.n, header.k, header.payload_len))
    if header.sparsify == RANDK:
        head += header.index_check.to_bytes(4, "little")
    framed = head + (_deflate_raw(payload, split) if zlib_on else payload)
    crc = zlib.crc32(framed, zlib.crc32(_SEED.pack(header.seed)))
    return framed + crc.to_bytes(TRAILER_SIZE, "little")


def open_blob(blob: bytes, seed: int) -> tuple[Header, bytes]:
    """The header and the (possibly deflated) body of a blob of either version; the crc32
    is checked first. The caller checks the header against its config."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(f"update blob must be bytes, not {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 2 + TRAILER_SIZE:
        raise RemoteProtocolError(f"update blob too short ({len(blob)} bytes)")
    framed, crc = blob[:-TRAILER_SIZE], int.from_bytes(blob[-TRAILER_SIZE:], "little")
    if blob[0] == LEAN_FORMAT_VERSION:
        if zlib.crc32(framed, zlib.crc32(_SEED.pack(seed))) != crc:
            raise RemoteProtocolError("update blob fails its crc32 (damaged, or encoded "
                                      "with another seed)")
        return _lean_header(framed, seed)
    if len(blob) < HEADER.size + TRAILER_SIZE:
        raise RemoteProtocolError(f"update blob too short ({len(blob)} bytes)")
    if zlib.crc32(framed) != crc:
        raise RemoteProtocolError("update blob fails its crc32")
    header = Header(*HEADER.unpack_from(framed))
    if header.version != FORMAT_VERSION:
        raise RemoteProtocolError(f"update blob has format version {header.version}")
    return header, framed[HEADER.size:]


def inflate(body: bytes, size: int, version: int) -> bytes:
    """Inflate exactly `size` bytes and refuse streams that would give more: no zlib bombs.
    Version 1 bodies are zlib streams, version 2 raw deflate."""
    inflater = zlib.decompressobj(15 if version == FORMAT_VERSION else -15)
    try:
        # max_length 0 means "unbounded" to zlib, so ask for at least one byte.
        out = inflater.decompress(body, max(size, 1))
        more = inflater.decompress(inflater.unconsumed_tail, 1) if inflater.unconsumed_tail else b""
    except zlib.error as exc:
        raise RemoteProtocolError(f"update payload is not valid zlib: {exc}") from exc
    if len(out) > size or more:
        raise RemoteProtocolError(f"update payload inflates past the declared {size} bytes")
    if len(out) < size or not inflater.eof:
        raise RemoteProtocolError(f"update payload is cut short of the declared {size} bytes")
    if inflater.unused_data:
        raise RemoteProtocolError("update blob has bytes after its zlib stream")
    return out


def _lean_header(framed: bytes, seed: int) -> tuple[Header, bytes]:
    codes = framed[1]
    sparsify, quantize, compress = codes & 3, codes >> 2 & 7, codes >> 5 & 3
    if codes >> 7 or quantize >= len(QUANTIZERS) or compress >= len(COMPRESSORS):
        raise RemoteProtocolError(f"update blob has unknown codec codes {codes:#04x}")
    at, values = 2, []
    for _ in range(4):
        value, at = _read_varint(framed, at)
        values.append(value)
    index_check = 0
    if sparsify == RANDK:
        if len(framed) < at + 4:
            raise RemoteProtocolError("update blob ends inside its header")
        index_check, at = int.from_bytes(framed[at:at + 4], "little"), at + 4
    block_size, n, k, payload_len = values
    header = Header(LEAN_FORMAT_VERSION, sparsify, quantize, compress, block_size, n, k, seed,
                    index_check, payload_len)
    return header, framed[at:]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """One canonical LEB128 value below 2**32 at `at`, and the offset after it."""
    value = 0
    for j in range(_MAX_VARINT):
        if at + j >= len(data):
            raise RemoteProtocolError("update blob ends inside its header")
        byte = data[at + j]
        value |= (byte & 0x7F) << (7 * j)
        if byte < 0x80:
            if j and byte == 0:
                raise RemoteProtocolError("update blob header has a varint not in its "
                                          "shortest form")
            if value >= 1 << 32:
                raise RemoteProtocolError("update blob header has a field past 2**32")
            return value, at + j + 1
    raise RemoteProtocolError("update blob header has a varint longer than 5 bytes")


def _deflate_raw(payload: bytes, split: int) -> bytes:
    """Raw deflate; a block ends at `split` when it falls inside the payload, so the
    values (near-random quantized codes) do not share code tables with the indices."""
    deflater = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -15)
    if not 0 < split < len(payload):
        return deflater.compress(payload) + deflater.flush()
    return (deflater.compress(payload[:split]) + deflater.flush(zlib.Z_BLOCK)
            + deflater.compress(payload[split:]) + deflater.flush())
