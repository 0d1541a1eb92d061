"""Parallel ingest through real mosquitto: `[ingest] workers = 2` verify and decode behind
a shared subscription, the service stores, folds, commits and acks.

Updates here are several chunks each, and the broker hands a shared subscription's
messages to its members one at a time, so most transfers have chunks at both workers:
each completes only if the stray chunks reach the device's owner (aggregator/
ingest_worker.py `owner_of`)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from aggregator.config import AggregatorConfig, AsyncConfig
from aggregator.ingest_batch import IngestConfig
from aggregator.service import Aggregator
from edge_client.shared.protocol import Topics
from edge_client.shared.protocol.chunking import decode_chunk, split
from edge_client.training import mlp_trainer
from tests.integration.burst import Burst
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
        mosquitto, tmp_path):
    devices = 200
    weights = mlp_trainer(SIZES, seed=0).get_weights()
    config = AggregatorConfig(federation=FEDERATION, port=mosquitto.port, mode="async",
                              async_=AsyncConfig(buffer_size=NEVER), rounds=0,
                              db_path=tmp_path / "agg.sqlite3", presence_settle_s=0.2,
                              ingest=IngestConfig(workers=2))
    agg = Aggregator(config, initial_weights=weights)
    stop = threading.Event()
    serving = threading.Thread(target=agg.run, args=(stop, False), daemon=True)
    burst = Burst(mosquitto, FEDERATION, devices, weights)
    serving.start()
    try:
        burst.say_online()
        burst.make_updates(burst.task())
        for nonce, (device, chunks) in list(burst.outbox.items()):
            message = b"".join(_payloads(chunks))
            burst.outbox[nonce] = (device, split(message, nonce, 400))
        assert all(len(chunks) >= 3 for _, chunks in burst.outbox.values())
        # Junk on an update topic is refused by a worker and answered by the writer.
        burst.client.publish(Topics(FEDERATION).update("burst-00000"), b"junk", qos=1)
        burst.send()
        burst.until_all_acked(timeout=90)
        assert burst.acked.pop("") == "rejected"  # the junk's answer names no transfer
        assert set(burst.acked.values()) == {"accepted"}
        assert Topics(FEDERATION).all_updates not in agg.link._filters  # the workers' job
    finally:
        stop.set()
        serving.join(30)
        burst.close()
    stored = {n for (_, n, _, _) in _stored(config.db_path)}
    assert stored == set(burst.acked)
    with sqlite3.connect(config.db_path) as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM rejections")]
    assert len(reasons) == 1  # the junk, once


def _payloads(chunks: list[bytes]) -> list[bytes]:
    """The message the chunks carry, in order (to cut it again into smaller chunks)."""
    return [decode_chunk(c).data for c in chunks]
