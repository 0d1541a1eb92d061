"""Secure aggregation end to end in one process: exact sums, dropouts at every phase,
classic and sparse graphs, quantized dense and shared random-k inputs."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.secagg.server import SecAggServer
from aggregator.secagg.simulation import run_round
from edge_client.shared.secagg import (
    FixedPoint,
    GraphParams,
    Phase,
    RoundAborted,
    SecAggClient,
    gather,
    scatter,
    shared_coordinates,
    threshold_for,
)
from edge_client.shared.secagg.graph import ring_order
from edge_client.shared.secagg.messages import MaskedInput

DIM = 300
BITS = 32


def _ids(n: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(n)]


def _graph(kind: str) -> tuple[int, GraphParams]:
    """(n, params): classic SecAgg on 20 devices, or a sparse degree-16 graph on 40."""
    if kind == "complete":
        return 20, GraphParams.complete(20)
    return 40, GraphParams(degree=16, threshold=threshold_for(16))


def _round(n: int, params: GraphParams, inputs: dict[str, np.ndarray], dim: int = DIM,
           bits: int = BITS, seed: int = 7) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    server = SecAggServer("round-1", list(inputs), dim, bits=bits, params=params,
                          round_seed=np.random.default_rng(seed).bytes(32))
    clients = {u: SecAggClient(u, "round-1", lambda u=u: inputs[u]) for u in inputs}
    return server, clients


def _random_inputs(n: int, seed: int = 0, dim: int = DIM, high: int = 1 << 20
                   ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(-high, high, dim, dtype=np.int64) for u in _ids(n)}


def _plain_sum(inputs: dict[str, np.ndarray], devices, bits: int = BITS) -> np.ndarray:
    total = np.zeros(next(iter(inputs.values())).shape[0], dtype=np.uint64)
    for u in devices:
        total += inputs[u].astype(np.uint64)
    return total & np.uint64((1 << bits) - 1)


@pytest.mark.parametrize("kind", ["complete", "sparse"])
def test_exact_sum_without_dropouts(kind):
    n, params = _graph(kind)
    inputs = _random_inputs(n)
    server, clients = _round(n, params, inputs)
    trace = run_round(server, clients)
    result = server.result
    assert result is not None and server.phase is Phase.DONE
    assert result.contributors == tuple(sorted(inputs)) and result.dropouts == {}
    assert np.array_equal(result.total, _plain_sum(inputs, inputs))
    assert not trace.client_errors and not trace.rejected


def test_sparse_graph_shares_with_degree_neighbours_only():
    n, params = _graph("sparse")
    server, clients = _round(n, params, _random_inputs(n))
    run_round(server, clients)
    for u, client in clients.items():
        assert len(client._held) == params.degree < n - 1
        assert set(client._held) == set(server.graph[u])


@pytest.mark.parametrize("kind", ["complete", "sparse"])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_dropping_after_sending_masked_input_keeps_their_input(kind, fraction):
    n, params = _graph(kind)
    inputs = _random_inputs(n, seed=int(fraction * 10))
    dropped = np.random.default_rng(1).choice(sorted(inputs), round(fraction * n), replace=False)
    server, clients = _round(n, params, inputs)
    run_round(server, clients, dropouts={u: Phase.UNMASKING for u in dropped})
    result = server.result
    assert result.contributors == tuple(sorted(inputs))  # their masked inputs had arrived
    assert {u: d.phase for u, d in result.dropouts.items()} == {u: "unmasking" for u in dropped}
    assert np.array_equal(result.total, _plain_sum(inputs, inputs))


@pytest.mark.parametrize("kind", ["complete", "sparse"])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_dropping_after_masking_before_sending_leaves_sum_of_survivors(kind, fraction):
    """Their neighbours masked with them: the server rebuilds their masking keys."""
    n, params = _graph(kind)
    inputs = _random_inputs(n, seed=3)
    dropped = set(np.random.default_rng(2).choice(sorted(inputs), round(fraction * n),
                                                   replace=False))
    server, clients = _round(n, params, inputs)
    run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in dropped})
    survivors = sorted(set(inputs) - dropped)
    result = server.result
    assert result.contributors == tuple(survivors)
    assert all(result.dropouts[u].phase == "masked_input" for u in dropped)
    assert np.array_equal(result.total, _plain_sum(inputs, survivors))
    assert not np.array_equal(result.total, _plain_sum(inputs, inputs))


@pytest.mark.parametrize("kind", ["complete", "sparse"])
def test_dropouts_at_every_phase_at_once(kind):
    n, params = _graph(kind)
    inputs = _random_inputs(n, seed=5)
    ids = sorted(inputs)
    plan = {ids[0]: Phase.ADVERTISE_KEYS, ids[1]: Phase.ADVERTISE_KEYS,
            ids[5]: Phase.SHARE_KEYS, ids[9]: Phase.MASKED_INPUT, ids[13]: Phase.UNMASKING}
    server, clients = _round(n, params, inputs)
    run_round(server, clients, dropouts=plan)
    result = server.result
    assert {u: d.phase for u, d in result.dropouts.items()} == {u: p.value
                                                                for u, p in plan.items()}
    contributors = [u for u in ids if plan.get(u) in (None, Phase.UNMASKING)]
    assert result.contributors == tuple(contributors)
    assert np.array_equal(result.total, _plain_sum(inputs, contributors))


def test_devices_that_never_advertised_get_nothing_and_are_not_masked_with():
    n, params = _graph("sparse")
    inputs = _random_inputs(n, seed=6)
    gone = sorted(inputs)[:4]
    server, clients = _round(n, params, inputs)
    run_round(server, clients, dropouts={u: Phase.ADVERTISE_KEYS for u in gone})
    for u, client in clients.items():
        if u not in gone:
            assert not set(client._held) & set(gone)
    assert np.array_equal(server.result.total, _plain_sum(inputs, sorted(set(inputs) - set(gone))))


def test_too_few_devices_left_aborts_with_the_phase_and_reason():
    n, params = _graph("complete")
    inputs = _random_inputs(n)
    server, clients = _round(n, params, inputs)
    keep = sorted(inputs)[: params.threshold]  # one fewer than threshold + 1
    with pytest.raises(RoundAborted, match=r"only \d+ devices remain") as info:
        run_round(server, clients, dropouts={u: Phase.SHARE_KEYS for u in inputs
                                             if u not in keep})
    assert info.value.phase == "share_keys"
    assert server.phase is Phase.ABORTED and server.result is None


def test_too_few_shares_at_unmasking_aborts():
    n, params = _graph("complete")
    inputs = _random_inputs(n)
    server, clients = _round(n, params, inputs)
    answering = sorted(inputs)[: params.threshold]  # each hears from threshold - 1 others
    with pytest.raises(RoundAborted, match="shares arrived") as info:
        run_round(server, clients, dropouts={u: Phase.UNMASKING for u in inputs
                                             if u not in answering})
    assert info.value.phase == "unmasking"


def test_a_neighbourhood_emptied_by_dropouts_aborts_before_unmasking():
    n, params = _graph("sparse")
    inputs = _random_inputs(n)
    server, clients = _round(n, params, inputs)
    victim = sorted(inputs)[0]
    gone = list(server.graph[victim])[: params.degree - params.threshold + 1]
    with pytest.raises(RoundAborted, match=f"self-mask seed of '{victim}' cannot be rebuilt"):
        run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in gone})


def test_dropouts_that_split_the_contributors_in_two_abort_the_round():
    """Each part's masks would cancel on their own, revealing each part's sum."""
    n, params = 16, GraphParams(degree=4, threshold=2)
    inputs = _random_inputs(n)
    server, clients = _round(n, params, inputs)
    ring = ring_order(sorted(inputs), server.setup.round_seed)
    gaps = [ring[0], ring[1], ring[8], ring[9]]  # the ring falls into two arcs of 6
    with pytest.raises(RoundAborted, match="2 separate groups") as info:
        run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in gaps})
    assert info.value.phase == "masked_input"
    # a single gap leaves one arc: the round finishes
    server, clients = _round(n, params, inputs)
    run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in ring[:2]})
    assert np.array_equal(server.result.total, _plain_sum(inputs, sorted(ring[2:])))


def test_share_phase_pruning_drops_devices_whose_neighbours_left():
    n, params = _graph("sparse")
    inputs = _random_inputs(n, seed=8)
    server, clients = _round(n, params, inputs)
    victim = sorted(inputs)[3]
    gone = list(server.graph[victim])[: params.degree - params.threshold + 1]
    run_round(server, clients, dropouts={u: Phase.SHARE_KEYS for u in gone})
    result = server.result
    assert result.dropouts[victim].phase == "share_keys"
    assert "threshold" in result.dropouts[victim].reason
    assert victim not in result.contributors
    assert np.array_equal(result.total, _plain_sum(inputs, result.contributors))


def test_every_bit_width_sums_mod_its_modulus():
    for bits in (12, 16, 64):
        inputs = _random_inputs(8, seed=bits, dim=50, high=1 << 11)
        server, clients = _round(8, GraphParams.complete(8), inputs, dim=50, bits=bits)
        run_round(server, clients, dropouts={sorted(inputs)[2]: Phase.MASKED_INPUT})
        expected = _plain_sum(inputs, server.result.contributors, bits=bits)
        assert np.array_equal(server.result.total, expected), bits


# ---------------------------------------------------------------- with fedge's encodings


def test_quantized_dense_updates_sum_exactly_and_decode_to_the_float_sum():
    n = 12
    rng = np.random.default_rng(11)
    updates = {u: rng.normal(0, 0.02, DIM).astype(np.float32) for u in _ids(n)}
    codec = FixedPoint.quantized(clip=0.05, value_bits=8, max_devices=n)
    assert codec.bits == 16  # 12 devices * 127 needs 12 bits; the smallest word is 16
    ints = {u: codec.to_integers(x, np.random.default_rng(i))
            for i, (u, x) in enumerate(updates.items())}
    assert all(np.abs(v).max() <= 127 for v in ints.values())  # each one is a q8 vector
    inputs = {u: codec.to_ring(v) for u, v in ints.items()}
    server, clients = _round(n, GraphParams.complete(n), inputs, bits=codec.bits)
    dropped = sorted(inputs)[:3]
    run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in dropped})
    survivors = server.result.contributors
    decoded = codec.decode_sum(server.result.total, len(survivors))
    exact = sum(ints[u] for u in survivors) / codec.scale
    assert np.array_equal(decoded, exact)  # integer sums are exact, negatives included
    clipped = sum(np.clip(updates[u], -0.05, 0.05) for u in survivors)
    assert np.max(np.abs(decoded - clipped)) <= len(survivors) / codec.scale


def test_shared_random_k_masks_only_the_common_coordinates():
    n, full = 10, 5000
    rng = np.random.default_rng(12)
    updates = {u: rng.normal(0, 0.1, full) for u in _ids(n)}
    round_seed = rng.bytes(32)
    codec = FixedPoint.quantized(clip=0.3, value_bits=8, max_devices=n)
    # every party derives the coordinates from the public round seed alone
    index = {u: shared_coordinates(round_seed, full, 0.02) for u in updates}
    kept = shared_coordinates(round_seed, full, 0.02)
    assert all(np.array_equal(i, kept) for i in index.values()) and kept.shape[0] == 100
    assert not np.array_equal(kept, shared_coordinates(rng.bytes(32), full, 0.02))
    inputs = {u: codec.encode(gather(updates[u], index[u])) for u in updates}
    server = SecAggServer("round-1", list(inputs), kept.shape[0], bits=codec.bits,
                          params=GraphParams.complete(n), round_seed=round_seed)
    clients = {u: SecAggClient(u, "round-1", lambda u=u: inputs[u]) for u in inputs}
    trace = run_round(server, clients, dropouts={_ids(n)[4]: Phase.UNMASKING},
                      keep_uplink=True)
    dense = scatter(full, kept, codec.decode_sum(server.result.total, n))
    expected = sum(np.rint(np.clip(updates[u], -0.3, 0.3) * codec.scale)
                   for u in updates) / codec.scale
    assert np.array_equal(dense[kept], expected[kept])
    assert np.count_nonzero(dense[np.setdiff1d(np.arange(full), kept)]) == 0
    # only k integers travel, as 16-bit words
    masked = [MaskedInput.from_bytes(data) for _, phase, data in trace.uplink
              if phase is Phase.MASKED_INPUT]
    assert len(masked) == n and all(len(m.masked) == 2 * kept.shape[0] for m in masked)


def test_fixed_point_refuses_settings_whose_sum_could_wrap():
    with pytest.raises(ValueError, match="could wrap"):
        FixedPoint(clip=1.0, scale=127.0, bits=16, max_devices=300)
    codec = FixedPoint(clip=1.0, scale=127.0, bits=16, max_devices=258)  # 258*127 <= 32767
    with pytest.raises(ValueError, match="may have wrapped"):
        codec.decode_sum(np.zeros(3, np.uint64), 259)
    low = codec.to_ring(np.full(4, -127 * 258))  # the most negative sum still decodes
    assert np.allclose(codec.decode_sum(low, 258), -258.0)


def test_stochastic_rounding_is_unbiased_and_stays_within_the_bound():
    codec = FixedPoint(clip=1.0, scale=10.0, bits=32, max_devices=10)
    values = np.full(20000, 0.123)
    ints = codec.to_integers(values, np.random.default_rng(0))
    assert set(np.unique(ints)) == {1, 2}
    assert abs(ints.mean() / codec.scale - 0.123) < 0.002
    clipped = codec.to_integers(np.array([5.0, -5.0, np.float32(1e30)]),
                                np.random.default_rng(1))
    assert list(clipped) == [10, -10, 10]
    with pytest.raises(ValueError, match="NaN"):
        codec.to_integers(np.array([np.nan]))
