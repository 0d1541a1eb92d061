"""Group commit through real mosquitto: a burst of many devices' updates is acked and
stored in far fewer fsync'd commits than updates, and `fedge aggregator serve` killed
with SIGKILL during such a burst has every update it acked in its store after restart."""

from __future__ import annotations

import itertools
import random
import sqlite3
import subprocess
import sys
import time

import pytest

from aggregator.config import AggregatorConfig, AsyncConfig
from aggregator.limits import LimitsConfig
from edge_client.training import mlp_trainer
from tests.integration.burst import SIZES, Burst, serving_burst
from tests.integration.fleet import FEDERATION

pytestmark = pytest.mark.integration
WEIGHTS = mlp_trainer(SIZES, seed=0).get_weights()
NEVER = 1_000_000  # an async buffer that never fills: one task, no versions, in both tests


def test_a_burst_from_many_devices_is_acked_and_stored_in_far_fewer_commits(mosquitto,
                                                                           tmp_path):
    devices = 300
    config = AggregatorConfig(federation=FEDERATION, port=mosquitto.port, mode="async",
                              async_=AsyncConfig(buffer_size=NEVER), rounds=0,
                              db_path=tmp_path / "agg.sqlite3", presence_settle_s=0.2)
    with serving_burst(mosquitto, config, devices, WEIGHTS) as (agg, burst):
        burst.say_online()
        burst.make_updates(burst.task())
        burst.send()
        burst.until_all_acked(timeout=60)
        assert set(burst.acked.values()) == {"accepted"}
        assert agg.link.acks.enabled  # paho 2.x: manual acks, the burst waited at the broker
    with sqlite3.connect(config.db_path) as db:
        stored = {n for (n,) in db.execute("SELECT nonce FROM updates")}
    assert stored == set(burst.acked)
    commits = agg.store.commits
    assert commits <= devices // 3, f"{commits} fsync'd commits for {devices} updates"


def _serve(config) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "aggregator", "serve",
                             "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_during_a_burst_loses_no_acked_update(mosquitto, tmp_path):
    devices, kills = 1000, 3
    db = tmp_path / "aggregator.sqlite3"
    config = tmp_path / "aggregator.toml"
    config.write_text(
        f'federation = "{FEDERATION}"\nport = {mosquitto.port}\nrounds = 0\nmode = "async"\n'
        f'db_path = "{db}"\npresence_settle_s = 0.2\n[model]\nsizes = {SIZES}\n'
        f'[async]\nbuffer_size = {NEVER}\n')
    burst = Burst(mosquitto, FEDERATION, devices, WEIGHTS)
    schedule = random.Random(3)
    killed_at: list[int] = []  # acks received when each kill came
    aggregator = _serve(config)
    try:
        burst.say_online()
        burst.make_updates(burst.task())
        for _ in range(kills):
            burst.send()  # the whole outbox at once: a burst
            seen = burst.collect()
            wanted = seen + schedule.randint(20, 80)
            deadline = time.monotonic() + 30
            while burst.collect(0.01) < wanted and time.monotonic() < deadline:
                pass
            killed_at.append(len(burst.acked))
            aggregator.kill()  # SIGKILL mid-burst: no clean-up of any kind
            aggregator.wait(10)
            burst.collect(0.3)  # acks already on their way count as acked
            burst.forget_task()
            aggregator = _serve(config)
            burst.task()  # published again once it is subscribed: send after that
        burst.send()
        burst.until_all_acked(timeout=90)
    finally:
        aggregator.kill()
        aggregator.wait(10)
        burst.close()
    with sqlite3.connect(db) as conn:
        stored = {n for (n,) in conn.execute("SELECT nonce FROM updates")}
    acked = {n for n, status in burst.acked.items() if status in ("accepted", "duplicate")}
    assert len(acked) == devices and acked <= stored  # every acked update is in the store
    # each kill came mid-burst: some acks before it, some updates still unacked
    assert len(killed_at) == kills and killed_at[0] > 0
    assert all(a < b < devices for a, b in itertools.pairwise(killed_at))


def test_interleaved_uploads_past_the_memory_budget_wait_in_files_and_all_arrive(
        mosquitto, tmp_path):
    """Chunks of many uploads arriving interleaved, as a cohort's do: with
    `[limits] upload_memory_bytes = 0` every chunk but an upload's last waits in a file
    (aggregator/upload_spill.py), and every update is still acked, stored and whole."""
    devices, chunk_size = 40, 300  # 44 bytes of data a chunk
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    config = AggregatorConfig(federation=FEDERATION, port=mosquitto.port, mode="async",
                              async_=AsyncConfig(buffer_size=NEVER), rounds=0,
                              db_path=tmp_path / "agg.sqlite3", presence_settle_s=0.2,
                              limits=LimitsConfig(upload_memory_bytes=0,
                                                  upload_spill_dir=str(spill_dir)))
    with serving_burst(mosquitto, config, devices, WEIGHTS) as (agg, burst):
        burst.say_online()
        burst.make_updates(burst.task(), chunk_size=chunk_size)
        uploads = list(burst.outbox.values())
        assert min(len(chunks) for _, chunks in uploads) >= 3
        for round_robin in itertools.zip_longest(*(chunks for _, chunks in uploads)):
            for (device, _), chunk in zip(uploads, round_robin, strict=True):
                if chunk is not None:  # chunk i of every upload, then chunk i + 1
                    burst.client.publish(burst.topics.update(device), chunk, qos=1)
        burst.until_all_acked(timeout=60)
        assert set(burst.acked.values()) == {"accepted"}
        assembler = agg.core.ingest.assembler
        assert assembler.spilled >= devices  # every upload had chunks in a file
        assert assembler.memory_held() == 0
    with sqlite3.connect(config.db_path) as db:
        stored = {n for (n,) in db.execute("SELECT nonce FROM updates")}
    assert stored == set(burst.acked)
    assert [p for p in spill_dir.rglob("*") if p.is_file()] == []  # taken back, removed
