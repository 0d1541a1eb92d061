"""Parallel ingest through real mosquitto: `[ingest] workers = 2` verify and decode behind
a shared subscription, the service stores, folds, commits and acks.

Updates here are several chunks each, and the broker hands a shared subscription's
messages to its members one at a time, so most transfers have chunks at both workers:
each completes only if the stray chunks reach the device's owner (aggregator/
ingest_worker.py `owner_of`)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from aggregator.config import AggregatorConfig, AsyncConfig
from aggregator.ingest_batch import IngestConfig
from aggregator.store import Store
from edge_client.shared.protocol import Topics
from edge_client.training import mlp_trainer
from tests.integration.burst import serving_burst
from tests.integration.fleet import FEDERATION, Digits, federate

pytestmark = pytest.mark.integration
SIZES = [16, 8]  # 136 parameters: several chunks of 400 bytes per update
NEVER = 1_000_000


def _stored(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT device_id, nonce, state, used_in FROM updates"))


def test_a_federation_with_two_ingest_workers_reaches_its_versions(mosquitto, tmp_path):
    data = Digits(devices=3)
    initial = data.accuracy(data.initial_weights())
    agg, clients, result = federate(mosquitto, tmp_path, data, rounds=3, chunk_size=1024,
                                    ingest=IngestConfig(workers=2))
    assert agg.version == 3 == result.version
    assert [h.updates for h in agg.history[1:]] == [3, 3, 3]
    assert data.accuracy(agg.global_weights) > initial + 0.3
    rows = _stored(agg.config.db_path)
    assert len(rows) == 9 and {r[2] for r in rows} == {"aggregated"}
    for c in clients:
        assert c.stats.acks["accepted"] == 3 and len(c.outbox) == 0
    assert agg.workers is not None and agg.workers.restarts == 0
    assert all(p is None or not p.is_alive() for p in agg.workers._procs)  # stopped with it


def test_a_burst_of_multi_chunk_updates_through_two_workers_is_stored_and_acked(
        mosquitto, store_url):
    """The writer's group commits on SQLite and on PostgreSQL (`store_url`)."""
    devices = 200
    weights = mlp_trainer(SIZES, seed=0).get_weights()
    where = {"db_url": store_url} if isinstance(store_url, str) else {"db_path": store_url}
    config = AggregatorConfig(federation=FEDERATION, port=mosquitto.port, mode="async",
                              async_=AsyncConfig(buffer_size=NEVER), rounds=0,
                              presence_settle_s=0.2, ingest=IngestConfig(workers=2),
                              **where)
    with serving_burst(mosquitto, config, devices, weights) as (agg, burst):
        burst.say_online()
        burst.make_updates(burst.task(), chunk_size=400)
        assert all(len(chunks) >= 3 for _, chunks in burst.outbox.values())
        # Junk on an update topic is refused by a worker and answered by the writer.
        burst.client.publish(Topics(FEDERATION).update("burst-00000"), b"junk", qos=1)
        burst.send()
        burst.until_all_acked(timeout=90)
        assert burst.acked.pop("") == "rejected"  # the junk's answer names no transfer
        assert set(burst.acked.values()) == {"accepted"}
        assert Topics(FEDERATION).all_updates not in agg.link._filters  # the workers' job
    store = Store(config.store_location)
    try:
        assert {nonce for _, _, nonce, _ in store.update_keys()} == set(burst.acked)
        assert store.count_rejections() == 1  # the junk, once
    finally:
        store.close()


def test_workers_of_a_killed_service_exit_and_a_killed_worker_is_started_again(
        mosquitto, tmp_path):
    config = tmp_path / "aggregator.toml"
    config.write_text(
        f'federation = "{FEDERATION}"\nport = {mosquitto.port}\nrounds = 0\nmode = "async"\n'
        f'db_path = "{tmp_path / "agg.sqlite3"}"\n[model]\nsizes = {SIZES}\n'
        f'[ingest]\nworkers = 2\n')
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        service = subprocess.Popen([sys.executable, "-m", "fedge", "aggregator", "serve",
                                    "--config", str(config)], stdout=out, stderr=out)
    try:
        workers = _children(service.pid, 2, timeout=30)
        wait_for(lambda: "2 ingest workers verify and decode" in log.read_text(), 30, log)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: "ingest worker" in log.read_text()
                 and "starting it again" in log.read_text(), 30, log)
        again = _children(service.pid, 2, timeout=30)
        assert workers[0] not in again and workers[1] in again
    finally:
        service.kill()  # SIGKILL: no clean-up of any kind
        service.wait(10)
    wait_for(lambda: not any(_running(p) for p in again), 10, log)  # they die with it
    assert "Traceback" not in log.read_text()


def _children(pid: int, count: int, timeout: float) -> list[int]:
    """The pids of `pid`'s ingest workers, once there are `count` of them alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in _pids() if _stat(p)[1] == pid and _running(p)
                 and b"spawn_main" in _cmdline(p)]
        if len(alive) == count:
            return sorted(alive)
        time.sleep(0.1)
    raise AssertionError(f"the service did not have {count} ingest workers in {timeout} s")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> tuple[str, int]:
    """A process's state letter and parent pid; ("", 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return "", 0
    return fields[0].decode(), int(fields[1])


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    return _stat(pid)[0] not in ("", "Z", "X")


def wait_for(predicate, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; service log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
