"""One device id floods the aggregator through real mosquitto (junk, large and small, and
never-finished uploads) while an honest federation runs: the aggregator survives within
its bounds and the federation ends with the accuracy it reaches alone."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from aggregator.limits import LimitsConfig
from edge_client.shared.protocol.chunking import Chunk, encode_chunk
from fedge.broker import MosquittoBroker
from tests.integration.fleet import FEDERATION, Digits, make_aggregator, make_client, start_all
from tests.mqtt_helpers import close_client, paho_client

pytestmark = pytest.mark.integration
ROUNDS = 3
LIMITS = LimitsConfig(inbound_queue_bytes=65536, uploads_per_device=2, open_uploads=50,
                      rejections_per_device=20)


def _flood(broker, stop: threading.Event, sent: list[int]) -> None:
    """Junk of 20 KB and of 10 bytes, and first chunks of uploads that never finish."""
    client = paho_client(broker.host, broker.port, "mallory")
    topic = f"fedge/{FEDERATION}/update/mallory"
    big = os.urandom(20_000)
    try:
        i = 0
        while not stop.is_set():
            kind = i % 3
            if kind == 0:
                payload = big
            elif kind == 1:
                payload = b"\xc1" + i.to_bytes(8, "big")
            else:
                payload = encode_chunk(Chunk(f"t{i}", 0, 2, 150, "0" * 64, os.urandom(75)))
            info = client.publish(topic, payload, qos=1)
            i += 1
            if i % 500 == 0:
                info.wait_for_publish(5)  # keep our own outgoing queue small
        sent.append(i)
    finally:
        close_client(client)


def _federate(broker, workdir, data: Digits, attack: bool):
    agg = make_aggregator(broker, workdir, data, rounds=ROUNDS, limits=LIMITS)
    clients = [make_client(broker, workdir, data, i) for i in range(len(data.shards))]
    stop, sent = threading.Event(), []
    attacker = threading.Thread(target=_flood, args=(broker, stop, sent), daemon=True)
    if attack:
        attacker.start()
    runs = start_all(agg, clients)
    try:
        for run in runs:
            run.join(60)
    finally:
        stop.set()
        if attack:
            attacker.join(10)
    return agg, sent


def test_a_flood_from_one_device_leaves_the_aggregator_bounded_and_serving(mosquitto,
                                                                          tmp_path):
    data = Digits(devices=3)
    other = MosquittoBroker.start(workdir=tmp_path / "other")  # no retained "done" task
    try:                                                     # left for the second run
        alone, _ = _federate(other, tmp_path / "alone", data, attack=False)
    finally:
        other.stop()
    agg, sent = _federate(mosquitto, tmp_path / "attacked", data, attack=True)

    assert agg.version == ROUNDS  # the honest federation finished beside the flood
    assert data.accuracy(agg.global_weights) == pytest.approx(
        data.accuracy(alone.global_weights), abs=0.03)
    assert sent and sent[0] > 300  # the flood really ran
    inbox = agg.events
    assert inbox.blocked > 0  # backpressure held paho back ...
    assert inbox.peak_bytes <= LIMITS.inbound_queue_bytes  # ... within the bound
    assert inbox.over_bound == 0
    assert agg.core.ingest.assembler.evicted == 0  # one id only ever replaces its own 2 uploads
    with sqlite3.connect(agg.config.db_path) as db:
        kept = db.execute("SELECT COUNT(*) FROM rejections WHERE device_id='mallory'")
        assert 0 < kept.fetchone()[0] <= LIMITS.rejections_per_device  # pruned
        stored = {r[0] for r in db.execute("SELECT device_id FROM updates")}
    assert stored == {"dev-0", "dev-1", "dev-2"}
