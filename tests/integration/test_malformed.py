"""Bad input through a real broker: each payload rejected with a reason, nothing stored,
and the aggregator keeps serving a real device afterwards."""

from __future__ import annotations

import os
import re
import sqlite3
import time

import msgpack
import numpy as np
import pytest

from edge_client.shared.protocol import Ack, Update, decode, encode, split
from edge_client.shared.protocol.chunking import Chunk, encode_chunk
from tests.integration.fleet import FEDERATION, Digits, Running, make_aggregator, make_client
from tests.mqtt_helpers import close_client, paho_client, publish, subscribe

pytestmark = pytest.mark.integration
EVIL = "mallory"


def _update_payload(data: Digits, shape_ok: bool = True,
                    finite: bool = True) -> tuple[str, bytes]:
    tensors = {k: np.zeros_like(v) for k, v in data.initial_weights().items()}
    if not shape_ok:
        tensors["dense0.weight"] = np.zeros((3, 3), np.float32)
    if not finite:
        tensors["dense0.bias"][1] = np.nan
    nonce = os.urandom(16).hex()
    update = Update(device_id=EVIL, task_id="r1-whatever", nonce=nonce, base_version=0,
                    num_samples=5, tensors=tensors)
    return nonce, encode(update)


def _bad_payloads(data: Digits) -> dict[str, list[bytes]]:
    """Each case is the list of MQTT messages an attacker publishes."""
    nonce, good = _update_payload(data)
    chunks = split(good, nonce, chunk_size=4096)
    tampered = msgpack.unpackb(chunks[0])
    tampered["data"] = bytes(len(tampered["data"]))  # same length, other bytes
    wrong_shape_nonce, wrong_shape = _update_payload(data, shape_ok=False)
    nan_nonce, with_nan = _update_payload(data, finite=False)
    huge = Chunk("ab" * 16, 0, 2, 10**9, "0" * 64, b"x")
    future = msgpack.unpackb(split(b"payload", "cd" * 16)[0])
    future["v"] = 2
    return {
        "truncated chunk": [chunks[0][: len(chunks[0]) // 2]],
        "wrong digest": [msgpack.packb(tampered, use_bin_type=True), *chunks[1:]],
        "wrong shape": split(wrong_shape, wrong_shape_nonce),
        "NaN values": split(with_nan, nan_nonce),
        "oversized declared size": [encode_chunk(huge)],
        "random bytes": [os.urandom(300)],
        "unknown version": [msgpack.packb(future, use_bin_type=True)],
    }


def _attacker_after_aggregator_is_up(broker):
    """An attacker client, returned once the aggregator is subscribed.

    The aggregator subscribes before it publishes its retained manifest, and the broker
    handles one client's packets in order, so a manifest means the subscription is in.
    """
    attacker = paho_client(broker.host, broker.port, "attacker")
    subscribe(attacker, f"fedge/{FEDERATION}/model").get(timeout=10)
    return attacker, subscribe(attacker, f"fedge/{FEDERATION}/ack/{EVIL}")


EXPECTED_REASON = {
    "truncated chunk": "not valid MessagePack",
    "wrong digest": "sha256",
    "wrong shape": "shape",
    "NaN values": "'dense0.bias' holds NaN or infinity",
    "oversized declared size": "exceeds the limit",
    "random bytes": "MessagePack|not a map|protocol version",
    "unknown version": "unsupported protocol version 2",
}


def test_each_malformed_update_is_rejected_and_the_aggregator_keeps_serving(mosquitto,
                                                                           tmp_path):
    data = Digits(devices=1)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=1)
    agg_run = Running(agg.run, "aggregator")
    attacker, acks = _attacker_after_aggregator_is_up(mosquitto)
    try:
        reasons = {}
        for case, messages in _bad_payloads(data).items():
            for message in messages:
                publish(attacker, f"fedge/{FEDERATION}/update/{EVIL}", message)
            ack = decode(acks.get(timeout=10).payload, expect=Ack)
            assert isinstance(ack, Ack) and ack.status == "rejected"
            reasons[case] = ack.reason
        for case, pattern in EXPECTED_REASON.items():
            assert re.search(pattern, reasons[case]), (case, reasons[case])
    finally:
        close_client(attacker)

    device = make_client(mosquitto, tmp_path, data, 0)
    device_run = Running(device.run, "device")
    agg_run.join(60)
    device_run.join(30)
    assert agg.version == 1  # still serving: the real device's round completed
    with sqlite3.connect(agg.config.db_path) as db:
        stored = [r[0] for r in db.execute("SELECT device_id FROM updates")]
        rejected = db.execute("SELECT COUNT(*) FROM rejections WHERE device_id=?",
                              (EVIL,)).fetchone()[0]
    assert stored == ["dev-0"]
    assert rejected == len(EXPECTED_REASON)


def test_an_update_claiming_another_device_is_rejected(mosquitto, tmp_path):
    data = Digits(devices=1)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=1)
    agg_run = Running(agg.run, "aggregator")
    attacker, acks = _attacker_after_aggregator_is_up(mosquitto)
    try:
        tensors = {k: np.zeros_like(v) for k, v in data.initial_weights().items()}
        nonce = os.urandom(16).hex()
        forged = encode(Update(device_id="dev-0", task_id="x", nonce=nonce, base_version=0,
                               num_samples=1, tensors=tensors))
        for chunk in split(forged, nonce):
            publish(attacker, f"fedge/{FEDERATION}/update/{EVIL}", chunk)
        ack = decode(acks.get(timeout=10).payload, expect=Ack)
        assert ack.status == "rejected" and "topic" in ack.reason
    finally:
        close_client(attacker)
        agg_run.halt()


def test_a_task_with_an_unusable_codec_is_logged_and_the_device_keeps_running(
        mosquitto, tmp_path, caplog):
    import dataclasses
    import logging

    from aggregator.config import AsyncConfig
    from tests.integration.fleet import wait_until

    data = Digits(devices=1)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=0, mode="async",
                          async_=AsyncConfig(buffer_size=5))
    device = make_client(mosquitto, tmp_path, data, 0, exit_when_done=False)
    runs = [Running(agg.run, "aggregator"), Running(device.run, "device")]
    caplog.set_level(logging.ERROR, logger="edge_client.client")
    wait_until(lambda: device.stats.updates_sent == 1, 20, "a first update")
    attacker = paho_client(mosquitto.host, mosquitto.port, "attacker")
    try:
        bad = dataclasses.replace(agg.task, task_id="v0-bogus", codec={"sparsify": "magic"})
        publish(attacker, f"fedge/{FEDERATION}/task", encode(bad), retain=True)
        wait_until(lambda: "cannot use" in caplog.text, 10, "the refusal in the log")
        time.sleep(0.5)  # the periodic re-check must not trip over it either
        assert runs[1].thread.is_alive() and runs[1].error is None
        assert device.stats.updates_sent == 1
    finally:
        close_client(attacker)
        for run in runs:
            run.halt()
