"""The messages of secure aggregation, as frozen dataclasses, and their encoding.

Decoding untrusted bytes into them is messages.py (`decode_message`), which also names
who sends what in which phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from edge_client.shared.secagg.errors import BadSecAggMessage

SECAGG_VERSION = 1
MAX_PARTICIPANTS = 100_000
MAX_DIM = 1 << 28
MAX_ID_LEN = 256
ROUND_SEED_SIZE = 32
COMMITMENT_SIZE = 32


class _Message:
    """What every message shares: a kind on the wire, to_bytes and from_bytes."""

    KIND: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": SECAGG_VERSION, "kind": self.KIND, **self.fields()},
                             use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        """Decode and validate; a message of any other kind is refused."""
        from edge_client.shared.secagg.messages import decode_message  # it imports us

        message = decode_message(data)
        if not isinstance(message, cls):
            raise BadSecAggMessage(f"expected a {cls.KIND!r} message, got {message.KIND!r}")
        return message


@dataclass(frozen=True)
class RoundSetup(_Message):
    """The server's announcement of a round: everything a device needs to take part."""

    KIND: ClassVar[str] = "secagg_setup"
    round_id: str
    participants: tuple[str, ...]
    dim: int  # integers per input vector (k of them under random-k)
    bits: int  # sums are mod 2**bits
    degree: int  # neighbours per device; len(participants) - 1 is the complete graph
    threshold: int  # shares needed to rebuild a secret
    round_seed: bytes  # public: fixes the graph (and random-k coordinates)

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "participants": list(self.participants),
                "dim": self.dim, "bits": self.bits, "degree": self.degree,
                "threshold": self.threshold, "round_seed": self.round_seed}


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Phase 0, device to server: two fresh X25519 public keys and a commitment to b_u."""

    KIND: ClassVar[str] = "secagg_advertise"
    round_id: str
    device_id: str
    c_pk: bytes
    s_pk: bytes
    seed_commitment: bytes

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id, "c_pk": self.c_pk,
                "s_pk": self.s_pk, "seed_commitment": self.seed_commitment}


@dataclass(frozen=True)
class PeerKeys:
    """One neighbour's public keys, as relayed by the server."""

    device_id: str
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class NeighbourKeys(_Message):
    """Phase 1, server to device u: the keys of u's neighbours that advertised."""

    KIND: ClassVar[str] = "secagg_neighbour_keys"
    round_id: str
    device_id: str
    peers: tuple[PeerKeys, ...]

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id,
                "peers": [[p.device_id, p.c_pk, p.s_pk] for p in self.peers]}


@dataclass(frozen=True)
class EncryptedShare:
    """u's shares of b_u and s_sk_u for v, sealed with the key only u and v can derive."""

    sender: str
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True)
class _SharesMessage(_Message):
    """Encrypted shares in transit: the same fields both ways, checked differently."""

    round_id: str
    device_id: str
    shares: tuple[EncryptedShare, ...]

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id,
                "shares": _share_list(self.shares)}


@dataclass(frozen=True)
class ShareKeys(_SharesMessage):
    """Phase 1, device to server: one encrypted share per neighbour, all from device_id."""

    KIND: ClassVar[str] = "secagg_share_keys"


@dataclass(frozen=True)
class ShareDelivery(_SharesMessage):
    """Phase 2, server to device u: the encrypted shares its neighbours sent it."""

    KIND: ClassVar[str] = "secagg_share_delivery"


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Phase 2, device to server: the masked vector, little-endian words of the round's bits."""

    KIND: ClassVar[str] = "secagg_masked_input"
    round_id: str
    device_id: str
    masked: bytes

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id, "masked": self.masked}


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Phase 3, server to device u: which of u's neighbours survived, which dropped."""

    KIND: ClassVar[str] = "secagg_unmask_request"
    round_id: str
    device_id: str
    survivors: tuple[str, ...]  # sent their masked input (u among them)
    dropped: tuple[str, ...]  # shared keys but sent no masked input

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id,
                "survivors": list(self.survivors), "dropped": list(self.dropped)}


@dataclass(frozen=True)
class RevealedShare:
    """The share u holds of a neighbour's secret (16 bytes of b_v, 32 of s_sk_v)."""

    owner: str
    share: bytes


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Phase 3, device to server: shares of b_v for survivors, of s_sk_v for dropouts."""

    KIND: ClassVar[str] = "secagg_unmask_response"
    round_id: str
    device_id: str
    seed_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]

    def fields(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "device_id": self.device_id,
                "seed_shares": [[s.owner, s.share] for s in self.seed_shares],
                "key_shares": [[s.owner, s.share] for s in self.key_shares]}


SecAggMessage = (RoundSetup | AdvertiseKeys | NeighbourKeys | ShareKeys | ShareDelivery
                 | MaskedInput | UnmaskRequest | UnmaskResponse)
# What devices send the server, one kind per phase.
FromDevice = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse


def _share_list(shares: tuple[EncryptedShare, ...]) -> list[list[Any]]:
    return [[s.sender, s.recipient, s.ciphertext] for s in shares]
