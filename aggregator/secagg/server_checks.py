"""What the secure-aggregation server checks of a round's setup and of each device's
message before it lets the message change the round (aggregator/secagg/server.py)."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.keys import agree
from edge_client.shared.secagg.masking import reduce
from edge_client.shared.secagg.messages import (
    MAX_DIM,
    MAX_ID_LEN,
    MAX_PARTICIPANTS,
    AdvertiseKeys,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    SecAggMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from edge_client.shared.secagg.prg import check_bits, from_wire, word_bytes


def check_round(round_id: str, ids: tuple[str, ...], dim: int, bits: int) -> None:
    if not isinstance(round_id, str) or not 0 < len(round_id) <= MAX_ID_LEN:
        raise ValueError(f"round_id must be a non-empty string of at most {MAX_ID_LEN} chars")
    if len(set(ids)) != len(ids) or not all(isinstance(u, str) and 0 < len(u) <= MAX_ID_LEN
                                            for u in ids):
        raise ValueError("participants must be distinct non-empty device ids")
    if len(ids) > MAX_PARTICIPANTS:
        raise ValueError(f"at most {MAX_PARTICIPANTS} participants, not {len(ids)}")
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dim must be in [1, {MAX_DIM}], not {dim!r}")
    check_bits(bits)


def check_message(sender: str, message: SecAggMessage, setup: RoundSetup,
                  sent_keys: dict[str, NeighbourKeys],
                  requests: dict[str, UnmaskRequest]) -> None:
    """Refuse a message whose content does not fit what the server sent `sender`: its
    keys, its shares' recipients, its masked vector's size, the shares it was asked for."""
    if isinstance(message, AdvertiseKeys):
        _check_public_key(message.c_pk, sender)
        _check_public_key(message.s_pk, sender)
    elif isinstance(message, ShareKeys):
        want = {p.device_id for p in sent_keys[sender].peers}
        got = {s.recipient for s in message.shares}
        if got != want:
            raise BadSecAggMessage(f"{sender!r} must send one share to each of the "
                                   f"{len(want)} neighbours whose keys it got")
    elif isinstance(message, MaskedInput):
        size = setup.dim * word_bytes(setup.bits)
        if len(message.masked) != size:
            raise BadSecAggMessage(f"masked input of {sender!r} has {len(message.masked)} "
                                   f"bytes, expected {size}")
    elif isinstance(message, UnmaskResponse):
        request = requests[sender]
        seeds = {s.owner for s in message.seed_shares}
        keys = {s.owner for s in message.key_shares}
        if seeds != set(request.survivors) - {sender} or keys != set(request.dropped):
            raise BadSecAggMessage(f"{sender!r} did not answer the shares it was asked for")


def _check_public_key(raw: bytes, sender: str) -> None:
    """Refuse a low-order key now rather than let it fail every neighbour later."""
    agree(X25519PrivateKey.generate(), raw, sender)


def add_masked(total: np.ndarray, message: MaskedInput, bits: int) -> None:
    """Add a masked input to the running sum mod 2**bits, in place; refuse values of
    more than `bits` bits (the sum would not be the devices' sum)."""
    values = from_wire(message.masked, bits)
    if bits % 8 and int(values.max(initial=0)) >> bits:
        raise BadSecAggMessage(f"masked input of {message.device_id!r} has values "
                               f"of more than {bits} bits")
    total += values
    reduce(total, bits)
