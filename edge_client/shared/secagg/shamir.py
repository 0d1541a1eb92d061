"""Shamir t-of-n sharing of 16- and 32-byte secrets, over pycryptodome's GF(2^128).

pycryptodome shares 16-byte secrets; a 32-byte X25519 private key is shared as two
halves with the same x coordinates, so one share of it is 32 bytes. Share i (0-based)
has x = i + 1. pycryptodome is imported here, lazily: only secure aggregation needs it
(the `secagg` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_client.shared.protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from Crypto.Protocol.SecretSharing import Shamir

HALF = 16


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares of a 16- or 32-byte secret, any `threshold` of which rebuild it."""
    shamir = _shamir()
    if len(secret) not in (HALF, 2 * HALF):
        raise LocalProtocolError(f"can share 16 or 32 bytes, not {len(secret)}")
    if not 1 <= threshold <= count:
        raise LocalProtocolError(f"need 1 <= threshold <= count, not {threshold}, {count}")
    halves = [shamir.split(threshold, count, secret[i:i + HALF])
              for i in range(0, len(secret), HALF)]
    return [b"".join(half[i][1] for half in halves) for i in range(count)]


def combine_shares(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from (x, share) pairs; with the wrong shares the result is just wrong,
    so callers check it (a commitment or a public key)."""
    shamir = _shamir()
    size = len(shares[0][1])
    if size not in (HALF, 2 * HALF) or any(len(s) != size for _, s in shares):
        raise LocalProtocolError("shares must all be 16 or all be 32 bytes")
    return b"".join(shamir.combine([(x, s[i:i + HALF]) for x, s in shares])
                    for i in range(0, size, HALF))


def _shamir() -> type[Shamir]:
    """pycryptodome's Shamir: `Crypto` from pip, `Cryptodome` from Debian's
    python3-pycryptodome (32-bit Raspberry Pi OS, where pip has no armv7l wheel)."""
    import importlib

    for package in ("Crypto", "Cryptodome"):  # the same module under its two names
        try:
            module = importlib.import_module(f"{package}.Protocol.SecretSharing")
        except ImportError:
            continue
        found: type[Shamir] = module.Shamir
        return found
    raise LocalProtocolError(
        "secure aggregation needs pycryptodome (neither `Crypto` nor `Cryptodome` "
        "imports): pip install 'fedge[secagg]', or on Debian/Raspberry Pi OS "
        "apt install python3-pycryptodome")
