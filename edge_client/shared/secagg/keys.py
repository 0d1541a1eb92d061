"""Key agreement, key derivation and share encryption, all from `cryptography`.

Each device makes two fresh X25519 key pairs per round: `c` to encrypt the shares it
sends its neighbours, `s` to agree the pairwise mask seeds. Every derived key goes
through HKDF-SHA256 with an `info` that names its purpose, the round and the devices,
so no key is ever used for two things.

`cryptography` is imported by the functions that use it, so importing this module (and
the device's SecAgg code with it) costs nothing until a secure round starts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

from edge_client.shared.secagg.errors import BadSecAggMessage

KEY_SIZE = 32  # X25519 public and private keys, and every derived key
SEED_SIZE = 16  # a self-mask seed b_u: one Shamir secret
NONCE_SIZE = 12
TAG_SIZE = 16
SHARE_PLAINTEXT_SIZE = SEED_SIZE + KEY_SIZE  # a share of b_u, then a share of s_sk_u
CIPHERTEXT_SIZE = NONCE_SIZE + SHARE_PLAINTEXT_SIZE + TAG_SIZE
_LABEL = "fedge-secagg/v1"

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; `public` is the 32 raw bytes that travel."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls.from_private(X25519PrivateKey.generate())

    @classmethod
    def from_private(cls, private: X25519PrivateKey) -> KeyPair:
        from cryptography.hazmat.primitives import serialization

        public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        return cls(private=private, public=public)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return cls.from_private(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.private_bytes(serialization.Encoding.Raw,
                                          serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())


def agree(private: X25519PrivateKey, peer_public: bytes, peer: str) -> bytes:
    """The X25519 shared secret with `peer`; a low-order or malformed key is refused."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise BadSecAggMessage(f"public key of {peer!r} is unusable: {exc}") from None


def derive_key(secret: bytes, purpose: str, *context: str) -> bytes:
    """A 32-byte key for one purpose, bound to its context (round id, device ids)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = msgpack.packb([_LABEL, purpose, *context], use_bin_type=True)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(secret)


def channel_key(shared: bytes, round_id: str, sender: str, recipient: str) -> bytes:
    """The AEAD key for shares from `sender` to `recipient` (one per direction)."""
    return derive_key(shared, "share", round_id, sender, recipient)


def pair_mask_key(shared: bytes, round_id: str, u: str, v: str) -> bytes:
    """The seed of the pairwise mask between u and v; the same from both ends."""
    low, high = sorted((u, v))
    return derive_key(shared, "pair-mask", round_id, low, high)


def self_mask_key(seed: bytes, round_id: str, device: str) -> bytes:
    """The seed of a device's self-mask, from its 16-byte b_u."""
    return derive_key(seed, "self-mask", round_id, device)


def seed_commitment(seed: bytes, round_id: str, device: str) -> bytes:
    """SHA-256 over b_u: lets the server check a rebuilt seed without learning it early."""
    return hashlib.sha256(msgpack.packb([_LABEL, "commit", round_id, device, seed],
                                        use_bin_type=True)).digest()


def share_associated_data(round_id: str, sender: str, recipient: str) -> bytes:
    """What an encrypted share is bound to: a replay into another round or pair fails."""
    return msgpack.packb([_LABEL, "share-ad", round_id, sender, recipient], use_bin_type=True)


def encrypt_share(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce || ChaCha20-Poly1305(plaintext); the nonce is random."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    nonce = os.urandom(NONCE_SIZE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def decrypt_share(key: bytes, blob: bytes, associated: bytes, sender: str) -> bytes:
    """The plaintext of one encrypted share; a garbled or misdirected one is refused."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if len(blob) != CIPHERTEXT_SIZE:
        raise BadSecAggMessage(f"share from {sender!r} has {len(blob)} bytes, "
                               f"expected {CIPHERTEXT_SIZE}")
    try:
        plain = ChaCha20Poly1305(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], associated)
    except InvalidTag:
        raise BadSecAggMessage(f"share from {sender!r} failed authentication: garbled, "
                               "forged, or encrypted for another device or round") from None
    if len(plain) != SHARE_PLAINTEXT_SIZE:
        raise BadSecAggMessage(f"share from {sender!r} has the wrong length")
    return plain
