"""A device's side of secure aggregation, as a sans-IO state machine.

`handle(message)` takes the server's next message and returns the reply to send; it
never touches the network. The device checks everything it can recompute itself: that
it takes part, that its neighbours are the ones the round seed gives, that every share
decrypts, and, before it releases any share, that the server does not ask for both the
self-mask seed and the masking key of the same neighbour. Any refusal raises
`BadSecAggMessage` and ends the client (it answers nothing more this round).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from edge_client.shared.protocol.errors import LocalProtocolError
from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.graph import GraphParams, neighbours_of
from edge_client.shared.secagg.keys import (
    SEED_SIZE,
    KeyPair,
    agree,
    channel_key,
    decrypt_share,
    encrypt_share,
    seed_commitment,
    share_associated_data,
)
from edge_client.shared.secagg.masking import add_signed, pair_mask, reduce, self_mask
from edge_client.shared.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
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
    decode_message,
)
from edge_client.shared.secagg.phases import Phase
from edge_client.shared.secagg.prg import modulus_mask, to_wire
from edge_client.shared.secagg.shamir import split_secret

InputProvider = Callable[[], np.ndarray]


class SecAggClient:
    """One device in one round; `input_provider` returns its integer vector when needed."""

    def __init__(self, device_id: str, round_id: str, input_provider: InputProvider) -> None:
        self.device_id = device_id
        self.round_id = round_id
        self._input_provider = input_provider
        self.phase = Phase.ADVERTISE_KEYS
        self._setup: RoundSetup | None = None
        self._neighbours: tuple[str, ...] = ()
        self._c: KeyPair | None = None  # encrypts shares
        self._s: KeyPair | None = None  # agrees pairwise masks
        self._seed = b""  # b_u, the self-mask seed
        self._peers: dict[str, PeerKeys] = {}
        self._held: dict[str, bytes] = {}  # owner -> decrypted (b share || s_sk share)

    # ------------------------------------------------------------ entry points

    def handle(self, message: SecAggMessage) -> SecAggMessage:
        """The reply to the server's message; a refusal raises and ends this client."""
        try:
            match message:
                case RoundSetup():
                    return self._advertise(message)
                case NeighbourKeys():
                    return self._share_keys(message)
                case ShareDelivery():
                    return self._masked_input(message)
                case UnmaskRequest():
                    return self._unmask(message)
                case _:
                    raise BadSecAggMessage(f"a device never handles {type(message).__name__}")
        except Exception:
            self.phase = Phase.ABORTED
            raise

    def handle_bytes(self, data: bytes) -> bytes:
        """`handle` on the wire form, both ways."""
        try:
            message = decode_message(data)
        except BadSecAggMessage:
            self.phase = Phase.ABORTED
            raise
        return self.handle(message).to_bytes()

    # ------------------------------------------------------------ phases

    def _advertise(self, setup: RoundSetup) -> AdvertiseKeys:
        self._check(Phase.ADVERTISE_KEYS, setup.round_id)
        if self.device_id not in setup.participants:
            raise BadSecAggMessage(f"{self.device_id!r} is not a participant of this round")
        problem = GraphParams(setup.degree, setup.threshold).problem(len(setup.participants))
        if problem is not None:
            raise BadSecAggMessage(f"round setup refused: {problem}")
        self._setup = setup
        self._neighbours = neighbours_of(self.device_id, setup.participants, setup.degree,
                                         setup.round_seed)
        self._c, self._s = KeyPair.generate(), KeyPair.generate()
        self._seed = os.urandom(SEED_SIZE)
        self.phase = Phase.SHARE_KEYS
        return AdvertiseKeys(round_id=self.round_id, device_id=self.device_id,
                             c_pk=self._c.public, s_pk=self._s.public,
                             seed_commitment=seed_commitment(self._seed, self.round_id,
                                                             self.device_id))

    def _share_keys(self, message: NeighbourKeys) -> ShareKeys:
        setup = self._expect(Phase.SHARE_KEYS, message.round_id, message.device_id)
        strangers = [p.device_id for p in message.peers if p.device_id not in self._neighbours]
        if strangers:
            raise BadSecAggMessage(f"keys of devices that are not neighbours: {strangers[:5]}")
        if len(message.peers) < setup.threshold:
            raise BadSecAggMessage(f"only {len(message.peers)} neighbours advertised keys; "
                                   f"the threshold is {setup.threshold}")
        assert self._c is not None and self._s is not None
        count = len(self._neighbours)
        seed_shares = split_secret(self._seed, setup.threshold, count)
        key_shares = split_secret(self._s.private_bytes(), setup.threshold, count)
        shares = []
        for peer in message.peers:
            i = self._neighbours.index(peer.device_id)
            key = channel_key(agree(self._c.private, peer.c_pk, peer.device_id),
                              self.round_id, self.device_id, peer.device_id)
            ad = share_associated_data(self.round_id, self.device_id, peer.device_id)
            shares.append(EncryptedShare(sender=self.device_id, recipient=peer.device_id,
                                         ciphertext=encrypt_share(key, seed_shares[i]
                                                                  + key_shares[i], ad)))
        self._peers = {p.device_id: p for p in message.peers}
        self.phase = Phase.MASKED_INPUT
        return ShareKeys(round_id=self.round_id, device_id=self.device_id, shares=tuple(shares))

    def _masked_input(self, message: ShareDelivery) -> MaskedInput:
        setup = self._expect(Phase.MASKED_INPUT, message.round_id, message.device_id)
        strangers = [s.sender for s in message.shares if s.sender not in self._peers]
        if strangers:
            raise BadSecAggMessage(f"shares from devices whose keys we never got: {strangers[:5]}")
        if len(message.shares) < setup.threshold:
            raise BadSecAggMessage(f"only {len(message.shares)} neighbours shared keys; "
                                   f"the threshold is {setup.threshold}")
        assert self._c is not None and self._s is not None
        held = {}
        for share in message.shares:
            peer = self._peers[share.sender]
            key = channel_key(agree(self._c.private, peer.c_pk, share.sender),
                              self.round_id, share.sender, self.device_id)
            ad = share_associated_data(self.round_id, share.sender, self.device_id)
            held[share.sender] = decrypt_share(key, share.ciphertext, ad, share.sender)
        total = self._input(setup)
        total += self_mask(self._seed, self.round_id, self.device_id, setup.dim, setup.bits)
        for peer_id in held:
            mask = pair_mask(self._s.private, self._peers[peer_id].s_pk, self.round_id,
                             self.device_id, peer_id, setup.dim, setup.bits)
            add_signed(total, mask, self.device_id, peer_id)
        self._held = held
        self.phase = Phase.UNMASKING
        return MaskedInput(round_id=self.round_id, device_id=self.device_id,
                           masked=to_wire(reduce(total, setup.bits), setup.bits))

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        setup = self._expect(Phase.UNMASKING, request.round_id, request.device_id)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = sorted(survivors & dropped)
        if both:
            raise BadSecAggMessage(f"refused: the server asks for both the self-mask seed and "
                                   f"the masking key of {both[:5]}, which would unmask them")
        if self.device_id not in survivors:
            raise BadSecAggMessage("refused: the request does not list this device, which "
                                   "sent its masked input, as a survivor")
        unknown = sorted((survivors | dropped) - set(self._held) - {self.device_id})
        if unknown:
            raise BadSecAggMessage(f"refused: no shares are held for {unknown[:5]}")
        if len(survivors) < setup.threshold:
            raise BadSecAggMessage(f"refused: {len(survivors)} survivors is below the "
                                   f"threshold {setup.threshold}")
        self.phase = Phase.DONE  # one answer per round: never both shares of anyone
        others = sorted(survivors - {self.device_id})
        return UnmaskResponse(
            round_id=self.round_id, device_id=self.device_id,
            seed_shares=tuple(RevealedShare(v, self._held[v][:SEED_SIZE]) for v in others),
            key_shares=tuple(RevealedShare(v, self._held[v][SEED_SIZE:])
                             for v in sorted(dropped)))

    # ------------------------------------------------------------ helpers

    def _expect(self, phase: Phase, round_id: str, device_id: str | None = None) -> RoundSetup:
        """Check a message of a phase after the first, and return the round's setup."""
        self._check(phase, round_id, device_id)
        assert self._setup is not None  # _advertise set it, or the phase would not match
        return self._setup

    def _check(self, phase: Phase, round_id: str, device_id: str | None = None) -> None:
        if self.phase is not phase:
            raise BadSecAggMessage(f"a {phase.value!r} message arrived while this device is in "
                                   f"phase {self.phase.value!r}")
        if round_id != self.round_id:
            raise BadSecAggMessage(f"message for round {round_id!r}, not {self.round_id!r}")
        if device_id is not None and device_id != self.device_id:
            raise BadSecAggMessage(f"message for device {device_id!r}, not {self.device_id!r}")

    def _input(self, setup: RoundSetup) -> np.ndarray:
        """The provider's vector as uint64 residues mod 2**bits (a copy we may add into)."""
        x = np.asarray(self._input_provider())
        if x.ndim != 1 or x.dtype.kind not in "iu":
            raise LocalProtocolError(f"secure aggregation input must be a 1-D integer vector "
                                     f"(encode floats with FixedPoint), not {x.dtype} {x.shape}")
        if x.shape[0] != setup.dim:
            raise LocalProtocolError(f"input has {x.shape[0]} values, the round has {setup.dim}")
        return x.astype(np.uint64) & modulus_mask(setup.bits)
