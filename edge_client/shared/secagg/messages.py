"""The messages of secure aggregation, as frozen dataclasses, and their wire encoding.

One MessagePack map per message with the secure-aggregation version `v`, a `kind` and
the fields; items of a list are short arrays (e.g. [sender, recipient, ciphertext]).
Every field of untrusted input is type- and size-checked here; whether it fits the round
(the right devices, the right lengths) is checked by the client and server state
machines, which know the round. Every refusal is a `BadSecAggMessage`.

Who sends what (u is a device; the server relays everything):

    0  server -> all   RoundSetup       participants, vector length, bits, graph, seed
    0  u -> server     AdvertiseKeys    c_pk (encryption), s_pk (masking), H(b_u)
    1  server -> u     NeighbourKeys    the keys of u's neighbours that advertised
    1  u -> server     ShareKeys        per neighbour v: AEAD(share of b_u, share of s_sk_u)
    2  server -> u     ShareDelivery    the encrypted shares addressed to u
    2  u -> server     MaskedInput      y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^bits
    3  server -> u     UnmaskRequest    which of u's neighbours survived and which dropped
    3  u -> server     UnmaskResponse   shares of b_v (survivors) or s_sk_v (dropped)
"""

from __future__ import annotations

import builtins
from typing import Any

import msgpack

from edge_client.shared.protocol.bounds import describe, is_int
from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.keys import CIPHERTEXT_SIZE, KEY_SIZE, SEED_SIZE
from edge_client.shared.secagg.message_types import (
    COMMITMENT_SIZE,
    MAX_DIM,
    MAX_ID_LEN,
    MAX_PARTICIPANTS,
    ROUND_SEED_SIZE,
    SECAGG_VERSION,
    AdvertiseKeys,
    EncryptedShare,
    FromDevice,
    MaskedInput,
    NeighbourKeys,
    PeerKeys,
    RevealedShare,
    RoundSetup,
    SecAggMessage,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from edge_client.shared.secagg.prg import MAX_BITS, MIN_BITS

__all__ = [
    "COMMITMENT_SIZE",
    "MAX_DIM",
    "MAX_ID_LEN",
    "MAX_PARTICIPANTS",
    "ROUND_SEED_SIZE",
    "SECAGG_VERSION",
    "AdvertiseKeys",
    "EncryptedShare",
    "FromDevice",
    "MaskedInput",
    "NeighbourKeys",
    "PeerKeys",
    "RevealedShare",
    "RoundSetup",
    "SecAggMessage",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode_message",
]


# ---------------------------------------------------------------- decoding


def decode_message(data: bytes) -> SecAggMessage:
    """Parse and validate untrusted bytes into one secure-aggregation message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadSecAggMessage("secagg payload is not bytes")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same
        raise BadSecAggMessage(f"secagg payload is not valid MessagePack: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise BadSecAggMessage("secagg payload is not a map")
    version = obj.get("v")
    if not is_int(version) or version != SECAGG_VERSION:
        raise BadSecAggMessage(f"unsupported secagg version {describe(version)} "
                               f"(this side speaks {SECAGG_VERSION})")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _DECODERS:
        raise BadSecAggMessage(f"unknown secagg message kind {describe(kind)}")
    return _DECODERS[kind](_Fields(obj, kind))


class _Fields:
    """Typed, bounded field access; a missing or mistyped field is a clear refusal.

    Its methods are named after the types they read, so below them the annotations spell
    the types `builtins.int` etc."""

    def __init__(self, obj: dict[str, Any], kind: str) -> None:
        self.obj = obj
        self.kind = kind

    def fail(self, problem: str) -> BadSecAggMessage:
        return BadSecAggMessage(f"{self.kind}: {problem}")

    def _get(self, name: str, kind: type) -> Any:
        if name not in self.obj:
            raise self.fail(f"missing field {name!r}")
        value = self.obj[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.fail(f"field {name!r} has the wrong type")
        return value

    def int(self, name: str, low: int, high: int) -> int:
        value = self._get(name, int)
        if not low <= value <= high:
            raise self.fail(f"field {name!r} must be in [{low}, {high}], not {value}")
        return value

    def id(self, name: str) -> str:
        return self.check_id(self._get(name, str), name)

    def check_id(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
            raise self.fail(f"{what} must be a non-empty string of at most {MAX_ID_LEN} chars")
        return value

    def bytes(self, name: str, size: builtins.int | None = None,
              max_size: builtins.int | None = None) -> builtins.bytes:
        return self.check_bytes(self._get(name, bytes), name, size, max_size)

    def check_bytes(self, value: Any, what: str, size: builtins.int | None = None,
                    max_size: builtins.int | None = None) -> builtins.bytes:
        if not isinstance(value, bytes):
            raise self.fail(f"{what} must be bytes")
        if size is not None and len(value) != size:
            raise self.fail(f"{what} must be {size} bytes, not {len(value)}")
        if max_size is not None and len(value) > max_size:
            raise self.fail(f"{what} is longer than {max_size} bytes")
        return value

    def ids(self, name: str) -> tuple[str, ...]:
        values = self.list(name)
        ids = tuple(self.check_id(v, f"an entry of {name!r}") for v in values)
        if len(set(ids)) != len(ids):
            raise self.fail(f"{name!r} lists a device twice")
        return ids

    def list(self, name: str) -> list[Any]:
        value = self._get(name, list)
        if len(value) > MAX_PARTICIPANTS:
            raise self.fail(f"{name!r} has more than {MAX_PARTICIPANTS} entries")
        return value

    def rows(self, name: str, width: builtins.int) -> builtins.list[builtins.list[Any]]:
        rows = self.list(name)
        if not all(isinstance(r, list) and len(r) == width for r in rows):
            raise self.fail(f"every entry of {name!r} must be a list of {width} items")
        return rows


def _setup_from(f: _Fields) -> RoundSetup:
    participants = f.ids("participants")
    n = len(participants)
    degree = f.int("degree", 1, max(1, n - 1))
    return RoundSetup(round_id=f.id("round_id"), participants=participants,
                      dim=f.int("dim", 1, MAX_DIM), bits=f.int("bits", MIN_BITS, MAX_BITS),
                      degree=degree, threshold=f.int("threshold", 1, degree),
                      round_seed=f.bytes("round_seed", ROUND_SEED_SIZE))


def _advertise_from(f: _Fields) -> AdvertiseKeys:
    return AdvertiseKeys(round_id=f.id("round_id"), device_id=f.id("device_id"),
                         c_pk=f.bytes("c_pk", KEY_SIZE), s_pk=f.bytes("s_pk", KEY_SIZE),
                         seed_commitment=f.bytes("seed_commitment", COMMITMENT_SIZE))


def _neighbour_keys_from(f: _Fields) -> NeighbourKeys:
    peers = tuple(PeerKeys(device_id=f.check_id(d, "a peer id"),
                           c_pk=f.check_bytes(c, "a peer's c_pk", KEY_SIZE),
                           s_pk=f.check_bytes(s, "a peer's s_pk", KEY_SIZE))
                  for d, c, s in f.rows("peers", 3))
    _unique(f, [p.device_id for p in peers], "peers")
    return NeighbourKeys(round_id=f.id("round_id"), device_id=f.id("device_id"), peers=peers)


def _encrypted_shares(f: _Fields) -> tuple[EncryptedShare, ...]:
    return tuple(EncryptedShare(sender=f.check_id(s, "a share's sender"),
                                recipient=f.check_id(r, "a share's recipient"),
                                ciphertext=f.check_bytes(c, "a share's ciphertext",
                                                         CIPHERTEXT_SIZE))
                 for s, r, c in f.rows("shares", 3))


def _share_keys_from(f: _Fields) -> ShareKeys:
    device = f.id("device_id")
    shares = _encrypted_shares(f)
    if any(s.sender != device for s in shares):
        raise f.fail("every share must be from the sending device")
    _unique(f, [s.recipient for s in shares], "share recipients")
    return ShareKeys(round_id=f.id("round_id"), device_id=device, shares=shares)


def _share_delivery_from(f: _Fields) -> ShareDelivery:
    device = f.id("device_id")
    shares = _encrypted_shares(f)
    if any(s.recipient != device for s in shares):
        raise f.fail("every share must be addressed to the receiving device")
    _unique(f, [s.sender for s in shares], "share senders")
    return ShareDelivery(round_id=f.id("round_id"), device_id=device, shares=shares)


def _masked_input_from(f: _Fields) -> MaskedInput:
    return MaskedInput(round_id=f.id("round_id"), device_id=f.id("device_id"),
                       masked=f.bytes("masked", max_size=MAX_DIM * 8))


def _unmask_request_from(f: _Fields) -> UnmaskRequest:
    return UnmaskRequest(round_id=f.id("round_id"), device_id=f.id("device_id"),
                         survivors=f.ids("survivors"), dropped=f.ids("dropped"))


def _revealed(f: _Fields, name: str, size: int) -> tuple[RevealedShare, ...]:
    shares = tuple(RevealedShare(owner=f.check_id(o, "a share's owner"),
                                 share=f.check_bytes(s, f"a share in {name!r}", size))
                   for o, s in f.rows(name, 2))
    _unique(f, [s.owner for s in shares], name)
    return shares


def _unmask_response_from(f: _Fields) -> UnmaskResponse:
    return UnmaskResponse(round_id=f.id("round_id"), device_id=f.id("device_id"),
                          seed_shares=_revealed(f, "seed_shares", SEED_SIZE),
                          key_shares=_revealed(f, "key_shares", KEY_SIZE))


def _unique(f: _Fields, names: list[str], what: str) -> None:
    if len(set(names)) != len(names):
        raise f.fail(f"{what} name a device twice")


_DECODERS: dict[str, Any] = {
    RoundSetup.KIND: _setup_from,
    AdvertiseKeys.KIND: _advertise_from,
    NeighbourKeys.KIND: _neighbour_keys_from,
    ShareKeys.KIND: _share_keys_from,
    ShareDelivery.KIND: _share_delivery_from,
    MaskedInput.KIND: _masked_input_from,
    UnmaskRequest.KIND: _unmask_request_from,
    UnmaskResponse.KIND: _unmask_response_from,
}
