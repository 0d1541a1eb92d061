"""Checksums of the link: CRC-16/CCITT-FALSE per frame, CRC-32 (IEEE) per model."""

from __future__ import annotations

import zlib

CRC16_INIT = 0xFFFF


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16_ccitt(data: bytes, crc: int = CRC16_INIT) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.

    Check value: crc16_ccitt(b"123456789") == 0x29B1.
    """
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 as zlib and Ethernet compute it; check value 0xCBF43926 for b"123456789"."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF
