"""A signed envelope around any encoded fedge message.

The envelope is itself a fedge message of kind "signed": the encoded inner message as
bytes, the signer's key id, and an Ed25519 signature over DOMAIN + body. The domain
prefix means a signature the same key made for anything else can never pass as a
fedge message. The body is signed as bytes, so verifying needs no re-encoding.

A valid signature says who made the body, not when: replays are the body's business
(nonces, task ids), and the receiver must check that the signer may speak for the
device the body names. This module never imports `cryptography` at import time; only
`verify_envelope` reaches it, through `edge_client.shared.identity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from edge_client.shared.protocol.bounds import describe
from edge_client.shared.protocol.errors import LocalProtocolError, RemoteProtocolError
from edge_client.shared.protocol.messages import KNOWN_VERSIONS, PROTOCOL_VERSION, unpack_map

SIGNED_KIND = "signed"
DOMAIN = b"fedge/signed/v1\x00"
MAX_KEY_ID_LEN = 64
SIGNATURE_SIZE = 64


class Signer(Protocol):
    """What `seal` needs: an `edge_client.shared.identity.Identity` is one."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class SignedEnvelope:
    """A parsed envelope whose signature has not been checked yet."""

    key_id: str
    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def seal(body: bytes, identity: Signer) -> bytes:
    """Wrap an encoded message in an envelope signed by `identity`."""
    _check_body(body)
    signature = identity.sign(DOMAIN + bytes(body))
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise LocalProtocolError("the signer must return a 64-byte signature")
    _check_key_id(identity.key_id, LocalProtocolError)
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": SIGNED_KIND,
                          "key_id": identity.key_id, "body": bytes(body), "sig": signature},
                         use_bin_type=True)


def _check_body(body: bytes) -> None:
    """Only a fedge message, and not an envelope, may be sealed."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise LocalProtocolError("seal: body must be bytes")
    try:
        kind = unpack_map(body, KNOWN_VERSIONS).get("kind")
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"seal: body is not an encoded fedge message: {exc}") from None
    if not isinstance(kind, str) or kind == SIGNED_KIND:
        raise LocalProtocolError(f"seal: cannot seal a message of kind {describe(kind)}")


def is_signed(message: bytes) -> bool:
    """Whether `message` is an envelope, judged by its kind alone; nothing is verified."""
    try:
        kind = unpack_map(message).get("kind")
        return isinstance(kind, str) and kind == SIGNED_KIND
    except RemoteProtocolError:
        return False


def open_envelope(message: bytes) -> SignedEnvelope:
    """Parse and check an envelope's fields; the signature is left to `verify_envelope`."""
    obj = unpack_map(message)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind != SIGNED_KIND:
        raise RemoteProtocolError(f"expected a message of kind {SIGNED_KIND!r}, "
                                  f"got {describe(kind)}")
    key_id = _field(obj, "key_id", str)
    _check_key_id(key_id, RemoteProtocolError)
    body = _field(obj, "body", bytes)
    if not body:
        raise RemoteProtocolError("signed: field 'body' is empty")
    signature = _field(obj, "sig", bytes)
    if len(signature) != SIGNATURE_SIZE:
        raise RemoteProtocolError(f"signed: field 'sig' must be {SIGNATURE_SIZE} bytes, "
                                  f"got {len(signature)}")
    return SignedEnvelope(key_id=key_id, body=body, signature=signature)


def _field(obj: dict[str, Any], name: str, kind: type) -> Any:
    if name not in obj or obj[name] is None:
        raise RemoteProtocolError(f"signed: missing field {name!r}")
    if not isinstance(obj[name], kind):
        raise RemoteProtocolError(f"signed: field {name!r} has the wrong type")
    return obj[name]


def _check_key_id(key_id: Any, error: type[Exception]) -> None:
    """Key ids end up in logs and lookups: short printable ASCII only."""
    if not isinstance(key_id, str):
        raise error("signed: key_id must be text")
    if not 0 < len(key_id) <= MAX_KEY_ID_LEN:
        raise error(f"signed: key_id must be 1 to {MAX_KEY_ID_LEN} characters")
    if not (key_id.isascii() and key_id.isprintable()):
        raise error("signed: key_id must be printable ASCII")


def verify_envelope(envelope: SignedEnvelope, public_bytes: bytes) -> bytes:
    """The envelope's body if `public_bytes` signed DOMAIN + body; else a refusal."""
    from edge_client.shared.identity import verify  # imports cryptography: only when verifying

    if not verify(public_bytes, DOMAIN + envelope.body, envelope.signature):
        raise RemoteProtocolError("bad signature")
    return envelope.body
