"""What secure aggregation refuses: garbled shares and ciphertexts, impersonation, bad
sizes, requests that would unmask a device; and that the server never holds an input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aggregator.secagg.server import SecAggServer
from aggregator.secagg.simulation import run_round
from edge_client.shared.secagg import (
    BadSecAggMessage,
    GraphParams,
    Phase,
    RoundAborted,
    SecAggClient,
)
from edge_client.shared.secagg.masking import add_signed, pair_mask, self_mask
from edge_client.shared.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    RevealedShare,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)

N, DIM, BITS = 10, 200, 32


def _setup(n: int = N, dim: int = DIM, bits: int = BITS, params: GraphParams | None = None):
    rng = np.random.default_rng(n)
    inputs = {f"dev-{i:02d}": rng.integers(0, 1 << 16, dim, dtype=np.int64) for i in range(n)}
    server = SecAggServer("r-9", list(inputs), dim, bits=bits,
                          params=params or GraphParams.complete(n), round_seed=rng.bytes(32))
    clients = {u: SecAggClient(u, "r-9", lambda u=u: inputs[u]) for u in inputs}
    return inputs, server, clients


def _step(server, clients, outgoing, skip=()):
    """One phase by hand: deliver, collect the replies, close."""
    for u, message in outgoing.items():
        if u not in skip:
            server.receive(u, clients[u].handle(message))
    return server.close_phase()


def _until_unmasking(skip_masked=()):
    inputs, server, clients = _setup()
    out = {u: server.setup for u in inputs}
    for _ in range(3):
        out = _step(server, clients, out, skip=skip_masked if server.phase is
                    Phase.MASKED_INPUT else ())
    assert server.phase is Phase.UNMASKING
    return inputs, server, clients, out


def _sum(inputs, devices):
    return sum(inputs[u].astype(np.uint64) for u in devices) & np.uint64((1 << BITS) - 1)


# ---------------------------------------------------------------- garbled data


def test_a_garbled_share_ciphertext_is_refused_by_its_recipient_and_the_round_goes_on():
    inputs, server, clients = _setup()
    victim = "dev-03"

    def flip(direction, device, phase, data):
        if direction == "down" and device == victim and phase is Phase.MASKED_INPUT:
            delivery = ShareDelivery.from_bytes(data)
            first = delivery.shares[0]
            bad = bytes([first.ciphertext[0] ^ 1]) + first.ciphertext[1:]
            data = replace(delivery, shares=(replace(first, ciphertext=bad),
                                             *delivery.shares[1:])).to_bytes()
        return data

    trace = run_round(server, clients, tamper=flip)
    assert "failed authentication" in trace.client_errors[victim]
    assert clients[victim].phase is Phase.ABORTED
    assert server.result.dropouts[victim].phase == "masked_input"
    assert np.array_equal(server.result.total, _sum(inputs, server.result.contributors))
    assert victim not in server.result.contributors


def test_a_share_relabelled_as_from_another_sender_fails_authentication():
    _inputs, server, clients = _setup()
    victim = "dev-05"

    def relabel(direction, device, phase, data):
        if direction == "down" and device == victim and phase is Phase.MASKED_INPUT:
            delivery = ShareDelivery.from_bytes(data)
            a, b = delivery.shares[0], delivery.shares[1]
            swapped = (replace(a, ciphertext=b.ciphertext), replace(b, ciphertext=a.ciphertext))
            data = replace(delivery, shares=swapped + delivery.shares[2:]).to_bytes()
        return data

    trace = run_round(server, clients, tamper=relabel)
    assert "failed authentication" in trace.client_errors[victim]


@pytest.mark.parametrize("kind", ["seed", "key"])
def test_a_wrong_revealed_share_is_caught_and_its_holder_named(kind):
    inputs, server, clients = _setup()
    dropped = "dev-07"
    owner = "dev-02" if kind == "seed" else dropped
    liar = sorted(server.graph[owner])[0]

    def lie(direction, device, phase, data):
        if direction == "up" and device == liar and phase is Phase.UNMASKING:
            response = UnmaskResponse.from_bytes(data)
            field = "seed_shares" if kind == "seed" else "key_shares"
            shares = tuple(RevealedShare(s.owner, bytes(len(s.share))) if s.owner == owner
                           else s for s in getattr(response, field))
            data = replace(response, **{field: shares}).to_bytes()
        return data

    run_round(server, clients, dropouts={dropped: Phase.MASKED_INPUT}, tamper=lie)
    assert server.result.bad_share_holders == (liar,)
    assert np.array_equal(server.result.total, _sum(inputs, server.result.contributors))


def test_a_wrong_share_with_no_spare_shares_aborts_with_a_clear_reason():
    inputs, server, clients = _setup()
    t = server.threshold
    answering = sorted(inputs)[: t + 1]  # each of them hears from exactly t others
    owner, liar = answering[0], answering[1]

    def lie(direction, device, phase, data):
        if direction == "up" and device == liar and phase is Phase.UNMASKING:
            response = UnmaskResponse.from_bytes(data)
            shares = tuple(RevealedShare(s.owner, bytes(16)) if s.owner == owner else s
                           for s in response.seed_shares)
            data = replace(response, seed_shares=shares).to_bytes()
        return data

    with pytest.raises(RoundAborted, match=f"self-mask seed of '{owner}' do not rebuild it"):
        run_round(server, clients, tamper=lie,
                  dropouts={u: Phase.UNMASKING for u in inputs if u not in answering})


def test_garbage_and_misfit_messages_are_refused_and_change_nothing():
    inputs, server, clients = _setup()
    out = {u: server.setup for u in inputs}
    with pytest.raises(BadSecAggMessage, match="not valid MessagePack"):
        server.receive_bytes("dev-01", b"\xc1garbage")
    advert = clients["dev-01"].handle(out["dev-01"])
    with pytest.raises(BadSecAggMessage, match="in the name of"):
        server.receive("dev-02", advert)
    with pytest.raises(BadSecAggMessage, match="round"):
        server.receive("dev-01", replace(advert, round_id="r-8"))
    with pytest.raises(BadSecAggMessage, match="unusable"):  # a low-order X25519 point
        server.receive("dev-01", replace(advert, s_pk=bytes(32)))
    with pytest.raises(BadSecAggMessage, match="expected 'secagg_advertise'"):
        server.receive("dev-01", MaskedInput("r-9", "dev-01", b"\0" * DIM * 4))
    assert "dev-01" in server.expecting
    server.receive("dev-01", advert)
    with pytest.raises(BadSecAggMessage, match="duplicate"):
        server.receive("dev-01", advert)
    with pytest.raises(BadSecAggMessage, match="not expected"):
        stranger = SecAggServer("r-9", ["x", "y", "z"], DIM, params=GraphParams.complete(3))
        server.receive("x", SecAggClient("x", "r-9", lambda: None).handle(stranger.setup))


def test_masked_inputs_of_the_wrong_size_or_width_are_refused():
    inputs, server, clients = _setup(bits=12)
    out = {u: server.setup for u in inputs}
    out = _step(server, clients, _step(server, clients, out))
    reply = clients["dev-00"].handle(out["dev-00"])
    with pytest.raises(BadSecAggMessage, match="expected 400"):
        server.receive("dev-00", replace(reply, masked=reply.masked[:-2]))
    with pytest.raises(BadSecAggMessage, match="more than 12 bits"):
        server.receive("dev-00", replace(reply, masked=b"\xff" * 400))
    server.receive("dev-00", reply)


# ---------------------------------------------------------------- what devices refuse


def test_a_device_refuses_to_reveal_both_secrets_of_one_neighbour():
    _inputs, _server, clients, requests = _until_unmasking()
    request = requests["dev-00"]
    greedy = replace(request, dropped=("dev-04",))  # dev-04 is also listed as a survivor
    assert "dev-04" in greedy.survivors
    with pytest.raises(BadSecAggMessage, match="both the self-mask seed and the masking key"):
        clients["dev-00"].handle(greedy)
    with pytest.raises(BadSecAggMessage):  # it answers nothing more this round
        clients["dev-00"].handle(request)


def test_a_device_answers_one_unmask_request_only():
    _inputs, _server, clients, requests = _until_unmasking(skip_masked=("dev-06",))
    request = requests["dev-01"]
    assert request.dropped == ("dev-06",)
    response = clients["dev-01"].handle(request)
    assert {s.owner for s in response.key_shares} == {"dev-06"}
    assert "dev-06" not in {s.owner for s in response.seed_shares}
    # a second request now calling dev-04 dropped would yield its key too: refused
    second = replace(request, survivors=tuple(u for u in request.survivors if u != "dev-04"),
                     dropped=("dev-04", "dev-06"))
    with pytest.raises(BadSecAggMessage, match="phase 'done'"):
        clients["dev-01"].handle(second)


def test_a_device_refuses_unmask_requests_that_misstate_the_round():
    for change, reason in [
        (lambda r: replace(r, survivors=tuple(u for u in r.survivors if u != "dev-02")),
         "does not list this device"),
        (lambda r: replace(r, survivors=("dev-02", "dev-03")), "below the threshold"),
        (lambda r: replace(r, dropped=("stranger",)), "no shares are held"),
        (lambda r: replace(r, device_id="dev-03"), "for device"),
    ]:
        _inputs, _server, clients, requests = _until_unmasking()
        with pytest.raises(BadSecAggMessage, match=reason):
            clients["dev-02"].handle(change(requests["dev-02"]))


def test_the_server_never_asks_for_both_secrets_of_a_device():
    inputs, server, clients = _setup(n=20, params=GraphParams(degree=8, threshold=4))
    requests = []

    def record(direction, device, phase, data):
        if direction == "down" and phase is Phase.UNMASKING:
            requests.append(UnmaskRequest.from_bytes(data))
        return data

    gone = sorted(inputs)[::5]
    run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in gone}, tamper=record)
    assert len(requests) == 20 - len(gone)
    assert all(not set(r.survivors) & set(r.dropped) for r in requests)
    assert set().union(*(r.dropped for r in requests)) == set(gone)


def test_a_device_refuses_keys_of_strangers_and_too_few_neighbours():
    inputs, server, clients = _setup(n=12, params=GraphParams(degree=4, threshold=3))
    out = _step(server, clients, {u: server.setup for u in inputs})
    u = "dev-00"
    stranger = next(v for v in inputs if v != u and v not in server.graph[u])
    extra = replace(out[stranger].peers[0], device_id=stranger)
    with pytest.raises(BadSecAggMessage, match="not neighbours"):
        _fresh(server, u).handle(replace(out[u], peers=(*out[u].peers, extra)))
    with pytest.raises(BadSecAggMessage, match="threshold is 3"):
        _fresh(server, u).handle(replace(out[u], peers=out[u].peers[:2]))


def _fresh(server, u):
    client = SecAggClient(u, "r-9", lambda: None)
    client.handle(server.setup)
    return client


def test_a_device_refuses_setups_it_is_not_in_or_cannot_run():
    _inputs, server, _clients = _setup()
    with pytest.raises(BadSecAggMessage, match="not a participant"):
        SecAggClient("outsider", "r-9", lambda: None).handle(server.setup)
    with pytest.raises(BadSecAggMessage, match="even degree"):
        SecAggClient("dev-01", "r-9", lambda: None).handle(replace(server.setup, degree=5))
    with pytest.raises(BadSecAggMessage, match="round"):
        SecAggClient("dev-01", "r-10", lambda: None).handle(server.setup)


# ---------------------------------------------------------------- what the server holds


def test_the_server_never_holds_an_unmasked_input():
    inputs, server, clients = _setup(n=12, dim=2000)
    trace = run_round(server, clients, dropouts={"dev-04": Phase.MASKED_INPUT},
                      keep_uplink=True)
    masked = {u: np.frombuffer(MaskedInput.from_bytes(data).masked, "<u4").astype(np.uint64)
              for u, phase, data in trace.uplink if phase is Phase.MASKED_INPUT}
    assert len(masked) == 11
    for u, y in masked.items():
        x = inputs[u].astype(np.uint64)
        assert np.count_nonzero(y == x) < 5  # about 2000 / 2**32 expected
        assert 0.45 < float(y.mean()) / 2**32 < 0.55  # uniform, while x < 2**16
        assert abs(np.corrcoef(x.astype(float), y.astype(float))[0, 1]) < 0.1
    # nor do its own fields: only public keys, relayed ciphertexts and the running sum
    arrays = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
    assert all(not np.array_equal(a, inputs[u]) for a in arrays for u in inputs)
    # every message it received is one of the kinds above: nothing else carries data
    kinds = {type(decode_message(data)) for _, _, data in trace.uplink}
    assert kinds == {AdvertiseKeys, ShareKeys, MaskedInput, UnmaskResponse}


def test_the_server_keeps_the_running_sum_not_the_masked_vectors():
    inputs, server, clients = _setup()
    out = {u: server.setup for u in inputs}
    for _ in range(2):
        out = _step(server, clients, out)
    for u, message in out.items():
        server.receive(u, clients[u].handle(message))
    stored = [m for m in server._received.values() if isinstance(m, MaskedInput)]
    assert len(stored) == N and all(m.masked == b"" for m in stored)
    arrays = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
    assert [a.shape for a in arrays] == [(DIM,)]  # the sum, uniform until unmasked


def test_one_input_needs_both_the_self_mask_seed_and_every_pairwise_key():
    inputs, server, clients = _setup(n=8, dim=500, params=GraphParams(degree=4, threshold=2))
    trace = run_round(server, clients, keep_uplink=True)
    u = "dev-03"
    y = next(np.frombuffer(MaskedInput.from_bytes(d).masked, "<u4").astype(np.uint64)
             for v, p, d in trace.uplink if v == u and p is Phase.MASKED_INPUT)
    client, x = clients[u], inputs[u].astype(np.uint64)
    mod = np.uint64((1 << BITS) - 1)
    # the server rebuilds b_u for every survivor: alone it leaves the pairwise masks on
    without_self = (y - self_mask(client._seed, "r-9", u, 500, BITS)) & mod
    assert np.count_nonzero(without_self == x) < 5
    # taking off the pairwise masks too needs s_sk_u or each neighbour's s_sk: the server
    # only rebuilds s_sk of devices whose input is not in the sum
    total = without_self.copy()
    for v in client._held:
        add_signed(total, pair_mask(client._s.private, server._keys[v].s_pk, "r-9", u, v,
                                    500, BITS), v, u)
    assert np.array_equal(total & mod, x)


def test_a_finished_or_aborted_round_accepts_nothing():
    inputs, server, clients = _setup()
    run_round(server, clients)
    with pytest.raises(BadSecAggMessage, match="is over"):
        server.receive("dev-01", MaskedInput("r-9", "dev-01", b""))
    assert server.expecting == frozenset()
    inputs, server, clients = _setup()
    with pytest.raises(RoundAborted):
        run_round(server, clients, dropouts={u: Phase.ADVERTISE_KEYS for u in sorted(inputs)[:8]})
    assert server.phase is Phase.ABORTED and "advertise_keys" in str(server.aborted)
    with pytest.raises(BadSecAggMessage, match="is over"):
        server.receive("dev-09", MaskedInput("r-9", "dev-09", b""))
