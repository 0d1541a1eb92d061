"""Streaming aggregation (aggregator/strategy/folding.py): updates folded into a running
sum as they arrive give the batch result (today's `aggregate` over every update) within
float tolerance, for FedAvg, the server optimizers and both DP wrappers, with dense and
sparse codecs; the strategies that need every update hold rows or refuse a cohort that
would not fit."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.core.events import SetStrategy
from aggregator.core.pending import PendingRecord, PendingUpdates
from aggregator.ingest import open_flat_update
from aggregator.privacy import CentralDp, DistributedDp, DpState, PrivacyConfig
from aggregator.service import Aggregator, now
from aggregator.strategy import (
    Contribution,
    FedAdam,
    FedAvg,
    FedYogi,
    Median,
    StrategyConfig,
)
from aggregator.strategy.folding import (
    Arrival,
    FlatUpdate,
    HeldRows,
    MeanSum,
    accumulator_for,
)
from edge_client.shared.codecs import CodecConfig, decode_dense, decode_sparse, encode_vector
from edge_client.shared.protocol import Task, TrainConfig, Update, encode
from edge_client.shared.protocol.seeds import update_seed
from edge_client.shared.protocol.tensors import unflatten_like

MODEL = {"a": np.linspace(-1, 1, 300, dtype=np.float32).reshape(20, 15),
         "b": np.zeros(15, np.float32)}
SIZE = 315
TOPK = CodecConfig(sparsify="topk", fraction=0.1)
Q8 = CodecConfig(quantize="q8")


def _updates(n: int, seed: int = 0, scale: float = 0.05) -> list[tuple[Arrival, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        vec = rng.normal(0, scale * (1 + i % 3), SIZE).astype(np.float32)
        out.append((Arrival(f"d{i:02d}", f"n{i}", int(rng.integers(5, 50)),
                            float(rng.choice([1.0, 0.5, 0.25]))), vec))
    return out


def _coded(updates, codec: CodecConfig | None):
    """Each update as the aggregator sees it: (arrival, dense row for the batch path,
    FlatUpdate for the streaming path), sparse when the codec is."""
    out = []
    for i, (arrival, vec) in enumerate(updates):
        if codec is None:
            out.append((arrival, vec, FlatUpdate(vec, SIZE)))
            continue
        blob = encode_vector(vec, codec, 7 + i, np.random.default_rng(i)).blob
        dense = decode_dense(blob, codec, SIZE, 7 + i)
        index, values = decode_sparse(blob, codec, SIZE, 7 + i)
        flat = FlatUpdate(values, SIZE, None if len(index) == SIZE else index)
        out.append((arrival, dense, flat))
    return out


def _batch(strategy, coded, lr: float = 1.0):
    contributions = [Contribution(a.device_id, unflatten_like(row, MODEL), a.samples,
                                  a.staleness_factor) for a, row, _ in coded]
    return strategy.aggregate(MODEL, sorted(contributions, key=lambda c: c.device_id), lr)


def _streamed(strategy, coded, lr: float = 1.0):
    acc = accumulator_for(strategy, MODEL)
    for arrival, _, flat in coded:  # arrival order, not device order
        acc.fold(arrival, flat)
    return acc.finish(MODEL, lr)


def _close(a, b, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("codec", [None, TOPK, Q8], ids=["dense", "topk", "q8"])
def test_fedavg_streamed_equals_batch(codec):
    coded = _coded(_updates(12)[::-1], codec)
    _close(_streamed(FedAvg(), coded, 0.7), _batch(FedAvg(), coded, 0.7))
    assert isinstance(accumulator_for(FedAvg(), MODEL), MeanSum)


def test_a_sparse_update_is_folded_without_a_dense_copy():
    flat = _coded(_updates(1), TOPK)[0][2]
    assert flat.index is not None and flat.values.shape[0] < SIZE // 5


@pytest.mark.parametrize("make", [FedAdam, FedYogi], ids=["fedadam", "fedyogi"])
@pytest.mark.parametrize("codec", [None, TOPK], ids=["dense", "topk"])
def test_server_optimizers_streamed_equal_batch_over_rounds(make, codec):
    batch, streamed = make(), make()
    for rnd in range(3):
        coded = _coded(_updates(8, seed=rnd), codec)
        _close(_streamed(streamed, coded), _batch(batch, coded), atol=1e-6)
        np.testing.assert_allclose(streamed.m, batch.m, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(streamed.v, batch.v, rtol=1e-6, atol=1e-12)


def _central(adaptive: bool = False) -> CentralDp:
    config = PrivacyConfig(mode="central", clip="adaptive" if adaptive else 0.3,
                           initial_clip=0.3, noise_multiplier=0.8, seed=11)
    return CentralDp(FedAvg(), config, cohort=10, state=DpState(clip=0.3, version=4))


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("codec", [None, TOPK], ids=["dense", "topk"])
def test_central_dp_streamed_equals_batch_with_the_same_seed(adaptive, codec):
    coded = _coded([(Arrival(a.device_id, a.nonce, a.samples, 1.0), v)
                    for a, v in _updates(10)], codec)
    batch, streamed = _central(adaptive), _central(adaptive)
    _close(_streamed(streamed, coded), _batch(batch, coded), atol=1e-6)
    b, s = batch.state.last, streamed.state.last
    assert b is not None and s is not None
    assert s.clipped.keys() == b.clipped.keys() and s.devices == b.devices
    assert s.median_norm == pytest.approx(b.median_norm)
    assert s.next_clip == pytest.approx(b.next_clip)
    assert s.noise_std == b.noise_std


def test_central_dp_clips_a_device_with_two_updates_on_their_sum():
    """Async: a stale and a fresh update of one device in one buffer. The first repeat
    folds the round again from the source, with that device summed apart."""
    updates = _updates(6)
    updates.append((Arrival("d01", "late", 9, 0.5), updates[1][1] * 3))
    coded = _coded(updates, None)
    batch = _central()
    expected = _batch(batch, coded)
    streamed = _central()
    pending = PendingUpdates()
    stored: list = []  # the store: an update is in it before it is folded

    def source():
        return ((_record(a), flat, a.staleness_factor) for a, _, flat in list(stored))
    pending.attach(lambda repeated: streamed.start(MODEL, repeated), source)
    for arrival, row, flat in coded:
        stored.append((arrival, row, flat))
        pending.add_record(_record(arrival), flat, arrival.staleness_factor)
    assert len(pending) == 7 and pending.devices().count("d01") == 2
    _close(pending.accumulator().finish(MODEL, 1.0), expected)
    assert streamed.state.last is not None and batch.state.last is not None
    assert streamed.state.last.devices == batch.state.last.devices == 6


def _record(arrival: Arrival) -> PendingRecord:
    return PendingRecord(arrival.device_id, "t", arrival.nonce, 0, arrival.samples)


def test_distributed_dp_streamed_equals_batch_and_refuses_two_updates_of_one_device():
    config = PrivacyConfig(mode="distributed", clip=0.5, noise_multiplier=1.0, seed=3)
    coded = _coded([(Arrival(a.device_id, a.nonce, a.samples, 1.0), v)
                    for a, v in _updates(5)], None)
    make = lambda: DistributedDp(FedAvg(), config, 5, DpState(clip=0.5, version=1))  # noqa: E731
    _close(_streamed(make(), coded), _batch(make(), coded))
    with pytest.raises(ValueError, match="one update per device"):
        _streamed(make(), [*coded, coded[0]])


def test_mean_sum_refuses_what_the_batch_mean_refuses():
    acc = FedAvg().start(MODEL)
    with pytest.raises(ValueError, match="no contribution"):
        acc.finish(MODEL, 1.0)
    acc.fold(Arrival("d0", "n", 0, 1.0), FlatUpdate(np.ones(SIZE, np.float32), SIZE))
    with pytest.raises(ValueError, match="positive samples"):
        acc.finish(MODEL, 1.0)


def test_mean_sum_drops_a_non_finite_update_as_the_batch_path_does():
    coded = _coded(_updates(4), None)
    bad = np.full(SIZE, np.nan, np.float32)
    streamed = _streamed(FedAdam(), [*coded, (Arrival("zz", "x", 5), bad, FlatUpdate(bad, SIZE))])
    _close(streamed, _batch(FedAdam(), coded))


def test_needs_all_strategies_hold_rows_and_give_the_batch_result():
    coded = _coded(_updates(7), TOPK)
    acc = accumulator_for(Median(), MODEL)
    assert isinstance(acc, HeldRows)
    for arrival, _, flat in coded:
        acc.fold(arrival, flat)
    np.testing.assert_array_equal(acc.finish(MODEL, 1.0)["a"], _batch(Median(), coded)["a"])


# ------------------------------------------------------------ through the core


BIG = {"w": np.zeros((1000, 100), np.float32)}  # 100k parameters


def test_a_needs_all_strategy_refuses_a_cohort_over_the_memory_limit(tmp_path):
    config = AggregatorConfig(db_path=tmp_path / "a.sqlite3",
                              strategy=StrategyConfig(name="median", memory_limit_mb=64),
                              sync=SyncConfig(target_updates=100))
    with pytest.raises(ValueError, match=r"\[strategy\] memory_limit_mb = 64: median") as exc:
        Aggregator(config, initial_weights=BIG)
    assert "\n" not in str(exc.value)
    fits = AggregatorConfig(db_path=tmp_path / "b.sqlite3", sync=SyncConfig(target_updates=100),
                            strategy=StrategyConfig(name="fedavg", memory_limit_mb=256))
    agg = Aggregator(fits, initial_weights=BIG)  # fedavg: one sum, no limit to check
    try:
        agg.core.strategy_named("trimmed_mean")  # 100 x 100k x 20 B: 191 MB fits ...
        agg.core.config.sync.over_selection = 1.0  # ... 200 invited do not
        with pytest.raises(ValueError, match="memory_limit_mb = 256: trimmed_mean"):
            agg.core.strategy_named("trimmed_mean")
        agg.core.strategy_named("fedadam")
    finally:
        agg.store.close()


def _round(agg: Aggregator, n: int, tag: str = "", count: int = 4) -> Task:
    state = agg.core.state
    task = Task(task_id=f"r{n}{tag}", mode="sync", round=n, model_version=n - 1,
                train=TrainConfig(), invited=tuple(f"d{i}" for i in range(count)))
    agg.store.add_task(task, encode(task))
    state.task = task
    return task


def _send(agg: Aggregator, task: Task, i: int, codec: CodecConfig | None = None) -> None:
    """One update stored and folded, as ingest does."""
    n = task.round
    rng = np.random.default_rng([n, i])
    vec = rng.normal(0, 0.05, SIZE).astype(np.float32)
    common = dict(device_id=f"d{i}", task_id=task.task_id, nonce=f"n{n}-{i}",
                  base_version=n - 1, num_samples=10 + i)
    if codec is None:
        update = Update(**common, tensors=unflatten_like(vec, MODEL))
    else:
        blob = encode_vector(vec, codec, update_seed(task.task_id, f"d{i}"),
                             np.random.default_rng(i)).blob
        update = Update(**common, tensors={}, codec=codec.to_wire(), blob=blob)
    message = encode(update)
    decoded, values = open_flat_update(message, agg.core.state.weights)
    assert agg.store.add_update(decoded, message, "pending")
    agg.core.state.pending.add(decoded, len(message), values)


@pytest.mark.parametrize("codec", [None, TOPK], ids=["dense", "topk"])
def test_a_restart_mid_round_folds_the_pending_updates_again_from_the_store(tmp_path, codec):
    straight = Aggregator(AggregatorConfig(db_path=tmp_path / "a.sqlite3"),
                          initial_weights=MODEL)
    task = _round(straight, 1)
    for i in range(4):
        _send(straight, task, i, codec)
    straight.core.versions.make(straight.core.state, now())
    expected = straight.core.state.weights
    straight.store.close()

    db = tmp_path / "b.sqlite3"
    first = Aggregator(AggregatorConfig(db_path=db), initial_weights=MODEL)
    task = _round(first, 1)
    for i in range(2):
        _send(first, task, i, codec)
    first.store.close()
    second = Aggregator(AggregatorConfig(db_path=db), initial_weights=MODEL)
    assert len(second.core.state.pending) == 2
    second.core.state.task = task
    for i in range(2, 4):
        _send(second, task, i, codec)
    second.core.versions.make(second.core.state, now())
    second.store.close()
    _close(second.core.state.weights, expected, atol=1e-7)


def test_a_strategy_switch_mid_round_folds_the_round_again(tmp_path):
    agg = Aggregator(AggregatorConfig(db_path=tmp_path / "a.sqlite3"), initial_weights=MODEL)
    task = _round(agg, 1)
    for i in range(4):
        _send(agg, task, i)
    agg.core.handle(SetStrategy("median"))
    state = agg.core.state
    assert isinstance(state.pending.accumulator(), HeldRows)
    assert len(state.pending) == 4
    agg.core.versions.make(state, now())
    assert state.version == 1
    agg.store.close()


def test_async_central_dp_through_the_core_clips_a_repeated_device_on_its_sum(tmp_path):
    """Two tasks, one device in both: the store is the source the round folds again from
    when the repeat shows; the version equals the batch wrapper's over every update."""
    from aggregator.config import AsyncConfig

    config = AggregatorConfig(
        db_path=tmp_path / "a.sqlite3", mode="async", async_=AsyncConfig(buffer_size=4),
        privacy=PrivacyConfig(mode="central", clip=0.2, noise_multiplier=0.5, seed=5))
    agg = Aggregator(config, initial_weights=MODEL)
    first, second = _round(agg, 1, "a"), _round(agg, 1, "b")
    contributions = []
    for task, device in ((first, 0), (first, 1), (second, 0), (first, 2)):
        rng = np.random.default_rng([device, len(task.task_id)])
        vec = rng.normal(0, 0.05, SIZE).astype(np.float32)
        update = Update(device_id=f"d{device}", task_id=task.task_id,
                        nonce=f"{task.task_id}-{device}", base_version=0, num_samples=10,
                        tensors=unflatten_like(vec, MODEL))
        message = encode(update)
        decoded, values = open_flat_update(message, MODEL)
        assert agg.store.add_update(decoded, message, "pending")
        agg.core.state.pending.add(decoded, len(message), values)
        contributions.append(Contribution(f"d{device}", update.tensors, 10))
    state = agg.core.state
    assert len(state.pending) == 4
    assert getattr(state.pending.accumulator(), "repeated", None) == {"d0"}
    batch = CentralDp(FedAvg(), config.privacy, agg.core.privacy.cohort,
                      DpState(clip=0.2, version=1))
    expected = batch.aggregate(MODEL, contributions)
    got = state.pending.accumulator().finish(MODEL, 1.0)
    _close(got, expected, atol=1e-7)
    assert agg.core.privacy.state.last is not None and batch.state.last is not None
    assert agg.core.privacy.state.last.devices == batch.state.last.devices == 3
    agg.store.close()
