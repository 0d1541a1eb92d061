"""A device's life through a real mosquitto: unplugged mid-training, broker outages,
SIGKILL and reboot, sleeping until the aggregator's check-in time."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from aggregator.config import AsyncConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.training import mlp_trainer
from fedge.profiles import AlwaysOn, FakeDeviceTree, apply, policy_for
from tests.integration.fedge_process import run_fedge
from tests.integration.fleet import (
    FEDERATION,
    Digits,
    Running,
    make_aggregator,
    make_client,
    start_all,
    wait_until,
)

pytestmark = pytest.mark.integration


def _updates_from(db_path, device: str) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT task_id, nonce, state FROM updates WHERE device_id=?",
                               (device,)))


class _UnplugAtBatch:
    """Pulls the charger out of the fake tree just before batch `n` of the first fit."""

    def __init__(self, inner, tree: FakeDeviceTree, n: int) -> None:
        self.inner, self.tree, self.n = inner, tree, n
        self.fits: list = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, x, y, config, should_stop=None):
        calls = 0

        def unplug_then_ask() -> bool:
            nonlocal calls
            calls += 1
            if not self.fits and calls == self.n:
                self.tree.set_power(battery_pct=80.0, charging=False, mains_online=False)
            return should_stop()

        result = self.inner.fit(x, y, config, should_stop=unplug_then_ask)
        self.fits.append(result)
        return result


def test_unplugged_mid_training_stops_at_the_next_batch_and_publishes_nothing(mosquitto,
                                                                             tmp_path):
    data = Digits(devices=1)
    tree = FakeDeviceTree(tmp_path / "tree")
    apply(tree, AlwaysOn().state_at(0.0, 0))
    trainer = _UnplugAtBatch(mlp_trainer(data.sizes, seed=0), tree, n=3)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=1)
    device = make_client(mosquitto, tmp_path, data, 0, trainer=trainer,
                         eligibility_check_s=0.1)
    device.policy = policy_for(tree, EligibilityConfig(hold_s=0.3))
    runs = [Running(agg.run, "aggregator"), Running(device.run, "device")]

    wait_until(lambda: len(trainer.fits) == 1, 20, "the first fit")
    first = trainer.fits[0]
    assert first.stopped_early and first.batches == 2  # batch 3 never started
    wait_until(lambda: any(d["reason"] == "on battery" and not d["eligible"]
                           for d in agg.store.devices()), 10, "status saying why")
    assert device.stats.updates_sent == 0 and agg.pending_count == 0
    assert _updates_from(agg.config.db_path, "dev-0") == []

    tree.set_power(battery_pct=80.0, charging=True, mains_online=True)  # plugged back in
    for run in runs:
        run.join(30)
    assert len(trainer.fits) == 2 and not trainer.fits[1].stopped_early
    assert agg.version == 1 and device.stats.acks["accepted"] == 1
    assert device.stats.skipped == {"stopped: on battery": 1}


def _gated(data: Digits, seed: int, gate: threading.Event):
    from tests.integration.test_federation import _GatedTrainer
    return _GatedTrainer(mlp_trainer(data.sizes, seed=seed), gate)


def test_updates_pending_through_a_broker_outage_arrive_exactly_once(mosquitto, tmp_path):
    data = Digits(devices=3)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=1)
    gate = threading.Event()
    clients = [make_client(mosquitto, tmp_path, data, i, trainer=_gated(data, i, gate),
                           ack_timeout_s=2.0) for i in range(3)]
    runs = start_all(agg, clients)
    wait_until(lambda: all(c.task is not None and c.model_version == 0 for c in clients),
               20, "devices holding the task")
    mosquitto.stop()
    gate.set()  # they finish training while the broker is down
    wait_until(lambda: all(len(c.outbox) == 1 for c in clients), 20, "updates in outboxes")
    mosquitto.restart()
    for run in runs:
        run.join(60)
    assert agg.version == 1 and agg.history[1].updates == 3
    for i, c in enumerate(clients):
        assert len(_updates_from(agg.config.db_path, f"dev-{i}")) == 1
        assert len(c.outbox) == 0


def _device_toml(tmp_path, port: int, data: Digits) -> str:
    x, y = data.shards[0]
    np.savez(tmp_path / "data.npz", x=x, y=y)
    path = tmp_path / "device.toml"
    path.write_text(
        f'device_id = "dev-0"\nfederation = "{FEDERATION}"\nport = {port}\n'
        f'state_dir = "{tmp_path / "state"}"\nack_timeout_s = 2.0\n'
        f'[model]\nsizes = {data.sizes}\n[data]\npath = "{tmp_path / "data.npz"}"\n'
        f'[eligibility]\nenabled = false\n')
    return str(path)


def test_a_device_killed_before_its_ack_delivers_once_after_restart(mosquitto, tmp_path):
    data = Digits(devices=1)
    # Async mode publishes its task with no device online yet.
    one = AsyncConfig(buffer_size=1)
    first = make_aggregator(mosquitto, tmp_path, data, rounds=1, mode="async", async_=one)
    run = Running(first.run, "aggregator-1")
    wait_until(lambda: first.task is not None, 20, "the first task")
    run.halt()  # the task stays retained; nobody will ack the update
    config = _device_toml(tmp_path, mosquitto.port, data)
    device = subprocess.Popen([sys.executable, "-m", "fedge.cli", "device", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    outbox = tmp_path / "state" / "outbox"
    try:
        wait_until(lambda: outbox.is_dir() and any(outbox.glob("*.update")), 30,
                   "an update in the outbox")
        time.sleep(0.5)  # published, waiting for an ack
    finally:
        device.kill()  # SIGKILL
        device.wait(10)
    assert device.returncode == -9

    second = make_aggregator(mosquitto, tmp_path, data, rounds=1, mode="async", async_=one)
    run = Running(second.run, "aggregator-2")
    restarted = subprocess.run(
        [sys.executable, "-m", "fedge.cli", "device", "--config", config],
        capture_output=True, text=True, timeout=60, check=False)
    run.join(30)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert len(_updates_from(second.config.db_path, "dev-0")) == 1
    assert second.version == 1 and not any(outbox.glob("*.update"))


def test_a_sleeping_device_comes_back_at_its_check_in_time(mosquitto, tmp_path):
    data = Digits(devices=2)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=2, checkin_interval_s=1.0,
                          checkin_jitter=0.5)
    sleeper = make_client(mosquitto, tmp_path, data, 0, sleep_between_tasks=True)
    other = make_client(mosquitto, tmp_path, data, 1)
    runs = [Running(agg.run, "aggregator"), Running(sleeper.run, "sleeper"),
            Running(other.run, "other")]
    wait_until(lambda: sleeper.stats.sleeps == 1, 20, "the sleeper to sleep")
    asleep_at = time.monotonic()
    wait_until(lambda: any(d["device_id"] == "dev-0" and not d["online"]
                           and d["reason"].startswith("sleeping")
                           for d in agg.store.devices()), 5, "status saying it sleeps")
    for run in runs:
        run.join(60)
    assert time.monotonic() - asleep_at >= 0.5  # jitter keeps it off for >= 0.5 s
    assert all("dev-0" in h.devices for h in agg.history[1:])


def test_the_diurnal_demo_counts_skipped_device_rounds(tmp_path):
    # A 16 s day: slots of 1/3 s, longer than a fit even on a loaded machine. With an 8 s
    # day, fits under load outlast their slots, most are stopped mid-way, and the run took
    # up to 250 s instead of 12.
    done = run_fedge("demo", "--devices", "4", "--rounds", "3", "--profile", "diurnal",
                     "--day-s", "16", "--json", "--workdir", str(tmp_path), timeout=300,
                     env={"PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    s = json.loads(done.stdout.strip().splitlines()[-1])
    assert s["profile"] == "diurnal" and s["model_versions"] == 3
    assert sum(s["skipped_by_reason"].values()) > 0
    assert s["final_accuracy"] > 0.5


def test_a_device_follows_an_aggregator_that_started_over_with_a_new_store(mosquitto,
                                                                          tmp_path):
    """A gateway reset (new db_path, same federation name) must not strand devices that
    hold a later version of the old run: they notice and follow the new run from v0."""
    data = Digits(devices=2)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    first = make_aggregator(mosquitto, tmp_path / "old", data, rounds=2)
    clients = [make_client(mosquitto, tmp_path, data, i, exit_when_done=False)
               for i in range(2)]
    runs = start_all(first, clients)
    runs[0].join(60)  # the old run is done: its devices hold version 2
    wait_until(lambda: all(c.model_version == 2 for c in clients), 30, "devices at v2")
    old_sha = clients[0].model_sha256
    second = make_aggregator(mosquitto, tmp_path / "new", data, rounds=1)
    run = Running(second.run, "new aggregator")
    try:
        run.join(60)
        assert second.version == 1
        assert [h.updates for h in second.history[1:]] == [2]  # both devices took part
        wait_until(lambda: all(c.model_version == 1 for c in clients), 30,
                   "devices following the new run")
        assert clients[0].model_sha256 != old_sha
    finally:
        for r in runs[1:]:
            r.halt()
