"""Consistent Overhead Byte Stuffing: frames without 0x00, so 0x00 can delimit them.

Cheshire and Baker's scheme as on Wikipedia's examples: a block of 254 non-zero bytes
is coded 0xFF and is not followed by an implicit zero, and no extra code byte follows
a full block at the end. Decoding refuses a zero byte inside the frame and a code
running past its end (`BadCobs`). It accepts one form the encoder never makes, a final
code 0x01 right after a full block, which decodes to the same bytes as without it; the
frame's CRC-16 still checks every byte (the C decoder does the same).
"""

from __future__ import annotations

from firmware_bridge.link.errors import BadCobs


def max_encoded_size(raw_len: int) -> int:
    """Worst-case COBS output for `raw_len` bytes (one code byte per 254, at least one)."""
    return raw_len + max(1, (raw_len + 253) // 254)


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    block = bytearray()
    full = False  # the last thing written was a 254-byte block (code 0xFF)
    for byte in data:
        full = False
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(0xFF)
            out += block
            block.clear()
            full = True
    if block or not full:
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise BadCobs(f"zero byte at offset {i} inside a COBS frame")
        end = i + code
        if end > n:
            raise BadCobs(f"code byte at offset {i} points {end - n} bytes past the end")
        block = data[i + 1:end]
        if 0 in block:
            raise BadCobs(f"zero byte inside the block at offset {i}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
