"""The server's side of secure aggregation, as a sans-IO state machine.

The caller feeds it device messages with `receive(sender, message)` and decides when a
phase ends (everyone answered, or a deadline passed) with `close_phase()`, which returns
the messages to relay, one per device. Devices that did not answer are recorded as
dropped in that phase. After the unmasking phase `result` holds the sum mod 2**bits of
the inputs of every device whose masked input arrived, and who they were.

What the server keeps: public keys, encrypted shares until relayed, and the running sum
of masked inputs, never an individual masked vector. The only secrets it ever rebuilds
are the self-mask seeds of devices whose input is in the sum and the masking keys of
devices whose input is not, each only from at least `threshold` shares, and never both
for one device (devices refuse to release that, and `close_phase` never asks for it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import numpy as np

from aggregator.secagg.members import Dropout, RoundMembers
from aggregator.secagg.recovery import need_one_group, recover_secret, unmask_requests
from aggregator.secagg.server_checks import add_masked, check_message, check_round
from edge_client.shared.protocol.errors import LocalProtocolError
from edge_client.shared.secagg.errors import BadSecAggMessage, RoundAborted
from edge_client.shared.secagg.graph import GraphParams, neighbour_graph
from edge_client.shared.secagg.keys import KeyPair, seed_commitment
from edge_client.shared.secagg.masking import add_signed, pair_mask, reduce, self_mask
from edge_client.shared.secagg.messages import (
    ROUND_SEED_SIZE,
    AdvertiseKeys,
    EncryptedShare,
    FromDevice,
    MaskedInput,
    NeighbourKeys,
    PeerKeys,
    RoundSetup,
    SecAggMessage,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from edge_client.shared.secagg.phases import Phase

M = TypeVar("M", bound=FromDevice)

_EXPECTED: dict[Phase, type[FromDevice]] = {
    Phase.ADVERTISE_KEYS: AdvertiseKeys,
    Phase.SHARE_KEYS: ShareKeys,
    Phase.MASKED_INPUT: MaskedInput,
    Phase.UNMASKING: UnmaskResponse,
}


@dataclass(frozen=True)
class SecAggResult:
    """The exact sum mod 2**bits of the contributors' inputs."""

    total: np.ndarray = field(repr=False)  # uint64, each value < 2**bits
    contributors: tuple[str, ...]  # whose masked input is in the sum
    dropouts: dict[str, Dropout]  # contributors may be here too (dropped while unmasking)
    bits: int
    bad_share_holders: tuple[str, ...] = ()  # devices whose revealed share was wrong


class SecAggServer:
    """One round of secure aggregation among `participants` over vectors of `dim` integers."""

    def __init__(self, round_id: str, participants: Sequence[str], dim: int, bits: int = 32,
                 params: GraphParams | None = None, round_seed: bytes | None = None) -> None:
        ids = tuple(sorted(participants))
        check_round(round_id, ids, dim, bits)
        params = params if params is not None else GraphParams.sparse(len(ids))
        problem = params.problem(len(ids))
        if problem is not None:
            raise ValueError(f"secure aggregation parameters: {problem}")
        seed = round_seed if round_seed is not None else os.urandom(ROUND_SEED_SIZE)
        if len(seed) != ROUND_SEED_SIZE:
            raise ValueError(f"round_seed must be {ROUND_SEED_SIZE} bytes")
        self.setup = RoundSetup(round_id=round_id, participants=ids, dim=dim, bits=bits,
                                degree=params.degree, threshold=params.threshold,
                                round_seed=seed)
        self.graph = neighbour_graph(ids, params.degree, seed)
        self.phase = Phase.ADVERTISE_KEYS
        self.members = RoundMembers(ids, self.graph, params.threshold)
        self.dropouts = self.members.dropouts
        self.result: SecAggResult | None = None
        self.aborted: RoundAborted | None = None
        self._received: dict[str, SecAggMessage] = {}  # this phase's messages
        self._keys: dict[str, AdvertiseKeys] = {}
        self._sent_keys: dict[str, NeighbourKeys] = {}
        self._masked_with: dict[str, set[str]] = {}  # u -> neighbours u masked with
        self._masked_sum = np.zeros(dim, dtype=np.uint64)
        self._contributors: set[str] = set()
        self._requests: dict[str, UnmaskRequest] = {}
        self._bad_holders: set[str] = set()

    @property
    def threshold(self) -> int:
        return self.setup.threshold

    @property
    def expecting(self) -> frozenset[str]:
        """Devices whose message for the current phase has not arrived yet."""
        if self.phase not in _EXPECTED:
            return frozenset()
        return frozenset(self.members.alive - set(self._received))

    # ------------------------------------------------------------ input

    def receive(self, sender: str, message: SecAggMessage) -> None:
        """Accept one device's message for the current phase; a bad one changes nothing."""
        expected = _EXPECTED.get(self.phase)
        if expected is None:
            raise BadSecAggMessage(f"round {self.setup.round_id!r} is over ({self.phase.value})")
        if not isinstance(message, expected):
            raise BadSecAggMessage(f"expected {expected.KIND!r} in phase {self.phase.value!r}, "
                                   f"got {type(message).__name__}")
        if message.device_id != sender:
            raise BadSecAggMessage(f"{sender!r} sent a message in the name of "
                                   f"{message.device_id!r}")
        if message.round_id != self.setup.round_id:
            raise BadSecAggMessage(f"message for round {message.round_id!r}, "
                                   f"not {self.setup.round_id!r}")
        if sender in self._received:
            raise BadSecAggMessage(f"duplicate {expected.KIND!r} from {sender!r}")
        if sender not in self.members.alive:
            raise BadSecAggMessage(f"{sender!r} is not expected in phase {self.phase.value!r}"
                                   + (f" (dropped in {self.dropouts[sender].phase})"
                                      if sender in self.dropouts else ""))
        check_message(sender, message, self.setup, self._sent_keys, self._requests)
        if isinstance(message, MaskedInput):
            add_masked(self._masked_sum, message, self.setup.bits)
            message = replace(message, masked=b"")  # only the running sum is kept
        self._received[sender] = message

    def receive_bytes(self, sender: str, data: bytes) -> None:
        """`receive` on the wire form."""
        self.receive(sender, decode_message(data))

    # ------------------------------------------------------------ phase changes

    def close_phase(self) -> dict[str, SecAggMessage]:
        """End the current phase; returns the message to relay to each remaining device.

        Raises RoundAborted (and stays aborted) when the round cannot finish.
        """
        closers: dict[Phase, Callable[[], dict[str, SecAggMessage]]] = {
            Phase.ADVERTISE_KEYS: self._close_advertise,
            Phase.SHARE_KEYS: self._close_share_keys,
            Phase.MASKED_INPUT: self._close_masked_input,
            Phase.UNMASKING: self._close_unmasking,
        }
        closer = closers.get(self.phase)
        if closer is None:
            raise LocalProtocolError(f"no phase to close: the round is {self.phase.value}")
        phase = self.phase
        self.members.drop_silent(phase, set(self._received))
        try:
            outgoing = closer()
        except RoundAborted as abort:
            self.phase, self.aborted = Phase.ABORTED, abort
            raise
        self._received = {}
        return outgoing

    def _close_advertise(self) -> dict[str, SecAggMessage]:
        self._keys = self._received_as(AdvertiseKeys)
        self.members.prune(Phase.ADVERTISE_KEYS,
                           "fewer neighbours than the threshold advertised keys")
        self._sent_keys = {
            u: NeighbourKeys(round_id=self.setup.round_id, device_id=u, peers=tuple(
                PeerKeys(v, self._keys[v].c_pk, self._keys[v].s_pk)
                for v in self.graph[u] if v in self.members.alive))
            for u in sorted(self.members.alive)}
        self.phase = Phase.SHARE_KEYS
        return dict(self._sent_keys)

    def _close_share_keys(self) -> dict[str, SecAggMessage]:
        self.members.prune(Phase.SHARE_KEYS, "fewer neighbours than the threshold shared keys")
        inbox: dict[str, list[EncryptedShare]] = {u: [] for u in self.members.alive}
        received = self._received_as(ShareKeys)
        for u in sorted(self.members.alive):
            for share in received[u].shares:
                if share.recipient in self.members.alive:
                    inbox[share.recipient].append(share)
        self._masked_with = {u: {s.sender for s in shares} for u, shares in inbox.items()}
        self._sent_keys = {}
        self.phase = Phase.MASKED_INPUT
        return {u: ShareDelivery(round_id=self.setup.round_id, device_id=u,
                                 shares=tuple(inbox[u])) for u in sorted(self.members.alive)}

    def _close_masked_input(self) -> dict[str, SecAggMessage]:
        contributors = set(self._received)
        dropped = set(self._masked_with) - contributors
        self._contributors = contributors
        self.members.need_survivors(Phase.MASKED_INPUT, contributors)
        for u in sorted(contributors):
            self.members.need_holders(Phase.MASKED_INPUT, u, "self-mask seed",
                                      self._linked(u, contributors))
        for v in sorted(dropped):
            if self._linked(v, contributors):
                self.members.need_holders(Phase.MASKED_INPUT, v, "masking key",
                                          self._linked(v, contributors))
        need_one_group(self._masked_with, contributors)
        self._requests = unmask_requests(self.setup.round_id, self._masked_with, contributors,
                                         dropped)
        self.phase = Phase.UNMASKING
        return dict(self._requests)

    def _close_unmasking(self) -> dict[str, SecAggMessage]:
        responses = self._received_as(UnmaskResponse)
        setup = self.setup
        total = self._masked_sum.copy()
        dropped = set(self._masked_with) - self._contributors
        for u in sorted(self._contributors):
            seed = self._recover(u, "self-mask seed", responses, lambda r: r.seed_shares,
                                 partial(self._is_seed_of, u))
            total -= self_mask(seed, setup.round_id, u, setup.dim, setup.bits)
        for v in sorted(dropped):
            survivors = sorted(self._linked(v, self._contributors))
            if not survivors:
                continue
            raw = self._recover(v, "masking key", responses, lambda r: r.key_shares,
                                partial(self._is_masking_key_of, v))
            private = KeyPair.from_private_bytes(raw).private
            for u in survivors:  # y_u holds sign(u, v) * PRG(s_uv): take it out
                mask = pair_mask(private, self._keys[u].s_pk, setup.round_id, v, u,
                                 setup.dim, setup.bits)
                add_signed(total, mask, v, u)  # -sign(u, v) == sign(v, u)
        self.result = SecAggResult(total=reduce(total, setup.bits),
                                   contributors=tuple(sorted(self._contributors)),
                                   dropouts=dict(self.dropouts), bits=setup.bits,
                                   bad_share_holders=tuple(sorted(self._bad_holders)))
        self._masked_sum = np.zeros(0, dtype=np.uint64)
        self.phase = Phase.DONE
        return {}

    # ------------------------------------------------------------ helpers

    def _linked(self, device: str, alive: set[str]) -> set[str]:
        """`device`'s neighbours that it exchanged shares with and that are in `alive`."""
        return self._masked_with.get(device, set()) & alive

    def _received_as(self, kind: type[M]) -> dict[str, M]:
        """This phase's messages, as the one kind `receive` let in during it."""
        return {u: m for u, m in self._received.items() if isinstance(m, kind)}

    def _is_seed_of(self, u: str, seed: bytes) -> bool:
        return seed_commitment(seed, self.setup.round_id, u) == self._keys[u].seed_commitment

    def _is_masking_key_of(self, v: str, private: bytes) -> bool:
        return KeyPair.from_private_bytes(private).public == self._keys[v].s_pk

    def _recover(self, owner: str, what: str, responses: dict[str, UnmaskResponse],
                 pick: Callable[[UnmaskResponse], tuple], valid: Callable[[bytes], bool]
                 ) -> bytes:
        secret, bad_holder = recover_secret(self.graph[owner], self.threshold, owner, what,
                                            responses, pick, valid)
        if bad_holder is not None:
            self._bad_holders.add(bad_holder)
        return secret
