"""The parts of secure aggregation on their own: wire format, neighbour graph, masks,
Shamir shares."""

from __future__ import annotations

import math
import os

import msgpack
import numpy as np
import pytest

from edge_client.shared.secagg import BadSecAggMessage, GraphParams, neighbour_graph, sparse_degree
from edge_client.shared.secagg.graph import (
    DEFAULT_DROPOUT,
    _too_few_alive,
    neighbours_of,
    threshold_for,
)
from edge_client.shared.secagg.keys import CIPHERTEXT_SIZE
from edge_client.shared.secagg.messages import (
    SECAGG_VERSION,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    NeighbourKeys,
    PeerKeys,
    RevealedShare,
    RoundSetup,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from edge_client.shared.secagg.prg import expand_mask, from_wire, to_wire, word_bytes
from edge_client.shared.secagg.shamir import combine_shares, split_secret

KEY = bytes(range(32))
CT = bytes(CIPHERTEXT_SIZE)

MESSAGES = [
    RoundSetup("r1", ("a", "b", "c", "d"), 1000, 16, 2, 2, os.urandom(32)),
    AdvertiseKeys("r1", "a", KEY, KEY[::-1], bytes(32)),
    NeighbourKeys("r1", "a", (PeerKeys("b", KEY, KEY), PeerKeys("d", KEY, KEY))),
    ShareKeys("r1", "a", (EncryptedShare("a", "b", CT), EncryptedShare("a", "d", CT))),
    ShareDelivery("r1", "a", (EncryptedShare("b", "a", CT),)),
    MaskedInput("r1", "a", b"\x01\x02" * 10),
    UnmaskRequest("r1", "a", ("a", "b"), ("d",)),
    UnmaskResponse("r1", "a", (RevealedShare("b", bytes(16)),), (RevealedShare("d", KEY),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    data = message.to_bytes()
    assert decode_message(data) == message
    assert type(message).from_bytes(data) == message


def _raw(message) -> dict:
    return msgpack.unpackb(message.to_bytes(), raw=False)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("change, reason", [
    (lambda m: {**m, "v": 2}, "unsupported secagg version 2"),
    (lambda m: {**m, "kind": "secagg_nope"}, "unknown secagg message kind"),
    (lambda m: {k: v for k, v in m.items() if k != "c_pk"}, "missing field 'c_pk'"),
    (lambda m: {**m, "c_pk": KEY[:31]}, "must be 32 bytes, not 31"),
    (lambda m: {**m, "s_pk": "text"}, "wrong type"),
    (lambda m: {**m, "device_id": ""}, "non-empty string"),
    (lambda m: {**m, "device_id": "x" * 257}, "at most 256"),
    (lambda m: {**m, "seed_commitment": None}, "wrong type"),
])
def test_malformed_advertisements_are_refused_with_the_reason(change, reason):
    with pytest.raises(BadSecAggMessage, match=reason):
        decode_message(_pack(change(_raw(MESSAGES[1]))))


@pytest.mark.parametrize("change, reason", [
    (lambda m: {**m, "participants": ["a", "b", "a"]}, "lists a device twice"),
    (lambda m: {**m, "participants": ["a", 3]}, "non-empty string"),
    (lambda m: {**m, "bits": 65}, r"'bits' must be in \[8, 64\]"),
    (lambda m: {**m, "bits": True}, "wrong type"),
    (lambda m: {**m, "dim": 0}, "'dim' must be in"),
    (lambda m: {**m, "degree": 4}, r"'degree' must be in \[1, 3\]"),
    (lambda m: {**m, "threshold": 3}, r"'threshold' must be in \[1, 2\]"),
    (lambda m: {**m, "round_seed": b"short"}, "must be 32 bytes"),
])
def test_malformed_setups_are_refused_with_the_reason(change, reason):
    with pytest.raises(BadSecAggMessage, match=reason):
        decode_message(_pack(change(_raw(MESSAGES[0]))))


def test_malformed_share_lists_are_refused():
    share_keys = _raw(MESSAGES[3])
    for shares, reason in [
        ([["a", "b"]], "list of 3 items"),
        ([["a", "b", CT[:-1]]], f"must be {CIPHERTEXT_SIZE} bytes"),
        ([["z", "b", CT]], "from the sending device"),
        ([["a", "b", CT], ["a", "b", CT]], "name a device twice"),
        ("nope", "wrong type"),
    ]:
        with pytest.raises(BadSecAggMessage, match=reason):
            decode_message(_pack({**share_keys, "shares": shares}))
    delivery = _raw(MESSAGES[4])
    with pytest.raises(BadSecAggMessage, match="addressed to the receiving device"):
        decode_message(_pack({**delivery, "shares": [["b", "z", CT]]}))
    response = _raw(MESSAGES[7])
    with pytest.raises(BadSecAggMessage, match="must be 16 bytes"):
        decode_message(_pack({**response, "seed_shares": [["b", KEY]]}))


def test_non_messages_and_the_wrong_kind_are_refused():
    for data, reason in [(b"", "not valid MessagePack"), (_pack([1, 2]), "not a map"),
                         ("text", "not bytes"), (_pack({"v": SECAGG_VERSION}), "kind None")]:
        with pytest.raises(BadSecAggMessage, match=reason):
            decode_message(data)
    with pytest.raises(BadSecAggMessage, match="expected a 'secagg_masked_input'"):
        MaskedInput.from_bytes(MESSAGES[1].to_bytes())


# ---------------------------------------------------------------- graph


def test_a_sparse_graph_is_regular_symmetric_and_fixed_by_the_seed():
    ids = [f"d{i}" for i in range(30)]
    seed = os.urandom(32)
    graph = neighbour_graph(ids, 8, seed)
    assert all(len(graph[u]) == 8 and u not in graph[u] for u in ids)
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert graph == neighbour_graph(list(reversed(ids)), 8, seed)
    assert all(neighbours_of(u, ids, 8, seed) == graph[u] for u in ids)
    assert graph != neighbour_graph(ids, 8, os.urandom(32))


def test_degree_n_minus_one_is_the_complete_graph():
    ids = ["a", "b", "c", "d", "e"]
    graph = neighbour_graph(ids, 4, bytes(32))
    assert graph["c"] == ("a", "b", "d", "e")
    assert GraphParams.complete(5) == GraphParams(4, threshold_for(4))


@pytest.mark.parametrize("n", [10, 50, 100, 1000, 100_000])
def test_sparse_degree_is_the_smallest_even_degree_meeting_the_dropout_bound(n):
    k = sparse_degree(n)
    floor = 2 * math.ceil(math.log2(n))
    assert k == n - 1 or (k % 2 == 0 and k >= floor)
    assert k == n - 1 or n * _too_few_alive(k, threshold_for(k), DEFAULT_DROPOUT) <= 2**-20
    if k - 2 >= floor and k < n - 1:  # one step smaller would miss the bound
        assert n * _too_few_alive(k - 2, threshold_for(k - 2), DEFAULT_DROPOUT) > 2**-20
    if n >= 1000:
        assert k < 2 * floor * 3  # grows like log n, far below n - 1
    assert GraphParams.sparse(n).problem(n) is None


def test_graph_parameters_that_cannot_work_are_named():
    assert "at least 3" in GraphParams(2, 2).problem(2)
    assert "even degree" in GraphParams(5, 2).problem(20)
    assert "threshold must be" in GraphParams(4, 5).problem(20)
    assert "threshold must be" in GraphParams(4, 1).problem(20)
    assert "degree must be" in GraphParams(20, 2).problem(20)
    assert threshold_for(2) == 2 and threshold_for(9) == 4


# ---------------------------------------------------------------- masks and shares


def test_masks_are_deterministic_per_key_and_below_the_modulus():
    a = expand_mask(KEY, 10_000, 12)
    assert np.array_equal(a, expand_mask(KEY, 10_000, 12))
    assert a.dtype == np.uint64 and int(a.max()) < 4096
    assert 0.45 < a.mean() / 4096 < 0.55
    b = expand_mask(KEY[::-1], 10_000, 12)
    assert np.count_nonzero(a == b) < 20
    assert np.array_equal(expand_mask(KEY, 100, 64)[:10], expand_mask(KEY, 10, 64))


def test_words_on_the_wire_are_as_small_as_the_bits_allow():
    assert [word_bytes(b) for b in (8, 9, 16, 17, 32, 33, 64)] == [1, 2, 2, 4, 4, 8, 8]
    values = np.array([0, 1, 65535], dtype=np.uint64)
    assert to_wire(values, 16) == b"\x00\x00\x01\x00\xff\xff"
    assert np.array_equal(from_wire(to_wire(values, 16), 16), values)
    with pytest.raises(ValueError, match="bits must be"):
        word_bytes(7)


@pytest.mark.parametrize("size", [16, 32])
def test_any_threshold_shares_rebuild_a_secret_and_fewer_do_not(size):
    secret = os.urandom(size)
    shares = split_secret(secret, 3, 6)
    assert len(shares) == 6 and all(len(s) == size for s in shares)
    for pick in ([0, 1, 2], [5, 3, 1], [2, 4, 5]):
        assert combine_shares([(i + 1, shares[i]) for i in pick]) == secret
    assert combine_shares([(1, shares[0]), (2, shares[1])]) != secret
    assert combine_shares([(1, shares[0]), (2, shares[1]), (4, shares[2])]) != secret
