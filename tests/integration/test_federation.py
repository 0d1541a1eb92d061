"""Whole federations through a real mosquitto on a loopback port."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest

from aggregator.config import SyncConfig
from tests.integration.fleet import (
    Digits,
    Running,
    federate,
    make_aggregator,
    make_client,
    start_all,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits3() -> Digits:
    return Digits(devices=3)


def _stored_updates(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT device_id, task_id, nonce, state, used_in FROM updates"))


def test_sync_federation_converges_and_every_update_is_used_once(mosquitto, tmp_path, digits3):
    initial = digits3.accuracy(digits3.initial_weights())
    agg, clients, result = federate(mosquitto, tmp_path, digits3, rounds=3)
    assert agg.version == 3 == result.version
    assert result.final_accuracy is None  # the test fleet's aggregator has no evaluator
    assert result.bytes_up == sum(c.stats.bytes_up for c in clients) > 0
    assert [h.updates for h in agg.history[1:]] == [3, 3, 3]
    assert digits3.accuracy(agg.global_weights) > initial + 0.3
    rows = _stored_updates(agg.config.db_path)
    assert len(rows) == 9 and {r[3] for r in rows} == {"aggregated"}
    assert sorted(r[4] for r in rows) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    for c in clients:
        assert c.stats.acks["accepted"] == 3 and len(c.outbox) == 0
        assert c.model_version == 3  # devices follow the global model to the end
        assert c.stats.bytes_up > 0 and c.stats.bytes_down > 0


def test_async_federation_weights_stale_updates(mosquitto, tmp_path, digits3):
    initial = digits3.accuracy(digits3.initial_weights())
    agg, _, _ = federate(mosquitto, tmp_path, digits3, mode="async", rounds=5)
    assert agg.version == 5
    assert all(h.updates == 2 for h in agg.history[1:])
    assert digits3.accuracy(agg.global_weights) > initial + 0.3
    rows = _stored_updates(agg.config.db_path)
    assert sum(1 for r in rows if r[3] == "aggregated") == 10


def test_device_cut_off_mid_upload_resends_and_is_counted_once(mosquitto, tmp_path, digits3):
    # Chunks of 1 KiB make the ~5 KB update several messages long.
    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=1, chunk_size=1024)
    clients = [make_client(mosquitto, tmp_path, digits3, i, ack_timeout_s=60)
               for i in range(3)]
    flaky = clients[0]
    publish, cut = flaky.link.publish, threading.Event()
    seen = {"update_chunks": 0}

    def publish_then_cut(topic: str, payload: bytes, retain: bool = False) -> bool:
        if "/update/" in topic and not cut.is_set():
            seen["update_chunks"] += 1
            if seen["update_chunks"] == 3:  # two chunks are out, the link goes down
                cut.set()
                flaky.link.drop_connection()
                return False
        return publish(topic, payload, retain)

    flaky.link.publish = publish_then_cut
    runs = start_all(agg, clients)
    for run in runs:
        run.join(60)
    assert cut.is_set()
    rows = _stored_updates(agg.config.db_path)
    assert [r[0] for r in rows].count("dev-0") == 1
    assert agg.history[1].updates == 3
    assert flaky.stats.acks["accepted"] == 1 and len(flaky.outbox) == 0


class _GatedTrainer:
    """A trainer that waits for a gate before fitting: a slow device we control."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, *args, **kwargs):
        assert self.gate.wait(60)
        return self.inner.fit(*args, **kwargs)


def _two_plus_gated(broker, workdir, data: Digits, gate: threading.Event) -> list:
    """Devices 0 and 1 as usual; device 2 trains only once `gate` is set."""
    from edge_client.training import mlp_trainer

    slow = _GatedTrainer(mlp_trainer(data.sizes, seed=2), gate)
    return [make_client(broker, workdir, data, 0), make_client(broker, workdir, data, 1),
            make_client(broker, workdir, data, 2, trainer=slow)]


def test_aggregator_restart_mid_round_keeps_every_acked_update(mosquitto, tmp_path, digits3):

    sync = SyncConfig(target_updates=3, round_timeout_s=60)
    first = make_aggregator(mosquitto, tmp_path, digits3, rounds=2, sync=sync)
    gate = threading.Event()
    clients = _two_plus_gated(mosquitto, tmp_path, digits3, gate)
    agg_run = Running(first.run, "aggregator-1")
    device_runs = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    wait_until(lambda: sum(c.stats.acks["accepted"] for c in clients[:2]) == 2, 30,
               "two acked updates")
    agg_run.halt()  # stopped with an open round holding two stored updates
    assert first.version == 0

    second = make_aggregator(mosquitto, tmp_path, digits3, rounds=2, sync=sync)
    assert second.version == 0 and second.pending_count == 2
    agg_run = Running(second.run, "aggregator-2")
    gate.set()
    agg_run.join(60)
    for run in device_runs:
        run.join(30)
    assert second.version == 2
    assert [h.updates for h in second.history[1:]] == [3, 3]
    assert second.history[1].devices == ("dev-0", "dev-1", "dev-2")
    rows = _stored_updates(second.config.db_path)
    assert len(rows) == 6 and {r[3] for r in rows} == {"aggregated"}


class _SlowTrainer:
    """A device that needs `delay_s` more than usual to train: slower than the deadline."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, *args, **kwargs):
        time.sleep(self.delay_s)
        return self.inner.fit(*args, **kwargs)


def test_a_fleet_slower_than_the_deadline_still_makes_a_version(mosquitto, tmp_path, caplog):
    """Every device needs over 1 s; the deadline starts at 0.3 s. Aborted rounds grow it
    (0.3, 0.6, 1.2, ...) until the fleet meets it; the version resets it to 0.3 s."""
    from edge_client.training import mlp_trainer

    data = Digits(devices=2)
    sync = SyncConfig(target_updates=2, min_fraction=1.0, round_timeout_s=0.3,
                      deadline_growth=2.0, wait_for_devices_s=0)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=1, sync=sync)
    clients = [make_client(mosquitto, tmp_path, data, i,
                           trainer=_SlowTrainer(mlp_trainer(data.sizes, seed=i), 1.0))
               for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="aggregator.service"):
        for run in start_all(agg, clients):
            run.join(90)
    assert agg.version == 1 and agg.history[1].updates == 2
    assert agg.history[1].round_wall_s > 1.0  # met only by a grown deadline
    grown = [r.getMessage() for r in caplog.records if "starting it again with" in r.getMessage()]
    assert grown and "with a 0.6 s deadline" in grown[0]
    with sqlite3.connect(agg.config.db_path) as db:
        aborted = db.execute("SELECT COUNT(*) FROM tasks WHERE state = 'aborted'").fetchone()[0]
    assert aborted == len(grown)
    assert agg.participation.timeout_s == 0.3


def test_restart_between_rounds_resumes_from_sqlite(mosquitto, tmp_path, digits3):
    first = make_aggregator(mosquitto, tmp_path, digits3, rounds=1)
    clients = [make_client(mosquitto, tmp_path, digits3, i, exit_when_done=False)
               for i in range(3)]
    device_runs = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    Running(first.run, "aggregator-1").join(60)
    assert first.version == 1
    second = make_aggregator(mosquitto, tmp_path, digits3, rounds=3)
    assert second.version == 1
    Running(second.run, "aggregator-2").join(60)
    for run in device_runs:
        run.halt()
    assert second.version == 3
    assert len(_stored_updates(second.config.db_path)) == 9


def test_a_late_update_never_breaks_a_round(mosquitto, tmp_path):
    from edge_client.training import mlp_trainer

    data = Digits(devices=4)
    sync = SyncConfig(target_updates=3, over_selection=0.34, round_timeout_s=60)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=0, sync=sync)  # until halted
    gate = threading.Event()
    slow = _GatedTrainer(mlp_trainer(data.sizes, seed=3), gate)
    clients = [make_client(mosquitto, tmp_path, data, i) for i in range(3)]
    clients.append(make_client(mosquitto, tmp_path, data, 3, trainer=slow))
    device_runs = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    wait_until(lambda: all(c.link.connected for c in clients), 10, "devices online")
    agg_run = Running(agg.run, "aggregator")
    wait_until(lambda: agg.version >= 1, 30, "round 1 to close with three updates")
    gate.set()  # the over-selected fourth device finishes after its round closed
    wait_until(lambda: clients[3].stats.acks["late"] == 1, 30, "the late ack")
    wait_until(lambda: agg.version >= 3, 30, "later rounds")
    agg_run.halt()
    for run in device_runs:
        run.halt()
    assert agg.history[1].updates == 3 and "dev-3" not in agg.history[1].devices
    assert all(h.updates == 3 for h in agg.history[1:])
    rows = [r for r in _stored_updates(agg.config.db_path) if r[0] == "dev-3"]
    assert rows[0][3] == "late" and rows[0][1].startswith("r1-")


def test_the_deadline_closes_a_round_with_the_minimum_fraction(mosquitto, tmp_path,
                                                               digits3):

    sync = SyncConfig(target_updates=3, round_timeout_s=1.5, min_fraction=0.6)
    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=1, sync=sync)
    gate = threading.Event()
    clients = _two_plus_gated(mosquitto, tmp_path, digits3, gate)
    agg_run = Running(agg.run, "aggregator")
    device_runs = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    agg_run.join(30)
    gate.set()
    for run in device_runs:
        run.join(30)
    assert agg.history[1].updates == 2  # ceil(0.6 * 3) came by the deadline
    assert agg.history[1].round_wall_s >= 1.5


def test_an_aggregator_that_starts_finished_still_serves_the_final_model(mosquitto, tmp_path,
                                                                         digits3):
    first = make_aggregator(mosquitto, tmp_path, digits3, rounds=1)
    clients = [make_client(mosquitto, tmp_path, digits3, i) for i in range(3)]
    runs = [Running(first.run, "aggregator-1")] + [Running(c.run, f"d{i}")
                                                   for i, c in enumerate(clients)]
    for run in runs:
        run.join(60)
    mosquitto.restart()  # a fresh broker: no retained model or task
    again = make_aggregator(mosquitto, tmp_path, digits3, rounds=1)
    Running(again.run, "aggregator-2").join(30)
    newcomer = make_client(mosquitto, tmp_path / "new", digits3, 0)
    Running(newcomer.run, "newcomer").join(30)
    assert newcomer.model_version == 1 and newcomer.stats.updates_sent == 0


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "fedadam"])
def test_a_strategy_chosen_in_the_config_trains(mosquitto, tmp_path, digits3, name):
    from aggregator.strategy.config import StrategyConfig

    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=3,
                          strategy=StrategyConfig(name=name))
    assert type(agg.strategy).__name__.lower().replace("_", "") != "fedavg"
    initial = digits3.accuracy(agg.global_weights)
    clients = [make_client(mosquitto, tmp_path, digits3, i) for i in range(3)]
    runs = start_all(agg, clients)
    for run in runs:
        run.join(60)
    assert agg.version == 3
    assert digits3.accuracy(agg.global_weights) > initial + 0.2


def test_set_data_trains_on_new_samples_from_the_next_task(mosquitto, tmp_path, digits3):
    """A device that keeps collecting (the bridge's MCU samples) swaps its data mid-run."""
    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=2)
    clients = [make_client(mosquitto, tmp_path, digits3, i) for i in range(3)]
    x, y = digits3.shards[0]

    def on_model(version, arch, weights):
        if version == 1:  # called before the device takes the task for round 2
            clients[0].set_data(x[:20], y[:20])
    clients[0].on_model = on_model
    with pytest.raises(ValueError, match="as many labels"):
        clients[0].set_data(x[:5], y[:4])
    for run in start_all(agg, clients):
        run.join(60)
    with sqlite3.connect(agg.config.db_path) as db:
        counts = dict(db.execute(
            "SELECT used_in, num_samples FROM updates WHERE device_id = 'dev-0'"))
    assert counts == {1: len(x), 2: 20}
