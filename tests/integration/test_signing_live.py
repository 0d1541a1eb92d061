"""Signed updates and models through a real mosquitto: who may take part, and every
forgery, replay and tampered model refused with a reason and nothing stored."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.ingest_batch import IngestConfig
from edge_client.shared.identity import Identity, load_or_create_identity
from edge_client.shared.protocol import ModelManifest, Update, encode, split
from edge_client.shared.protocol.signing import seal
from edge_client.shared.security import AggregatorSecurity, BrokerAuth, DeviceSecurity
from fedge.broker import MosquittoBroker, free_port
from tests.integration.fleet import (
    FEDERATION,
    Digits,
    Running,
    make_aggregator,
    make_client,
    start_all,
    wait_until,
)
from tests.mqtt_helpers import close_client, paho_client, publish, subscribe

pytestmark = pytest.mark.integration


def _secure_aggregator(broker, tmp_path, data, **overrides):
    security = AggregatorSecurity(enabled=True, key_file=tmp_path / "keys" / "aggregator.key")
    return make_aggregator(broker, tmp_path, data, security=security, **overrides)


def _secure_client(broker, tmp_path, data, index, agg, enroll=True, **overrides):
    key = tmp_path / "keys" / f"dev-{index}.key"
    security = DeviceSecurity(key_file=key, aggregator_key=agg.identity.public_text)
    client = make_client(broker, tmp_path, data, index, security=security, **overrides)
    if enroll:
        agg.store.enroll(client.config.device_id, client.identity.public_text)
    return client


def _rows(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT device_id, task_id, nonce FROM updates"))


def _reasons(db_path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [r[0] for r in db.execute("SELECT reason FROM rejections")]


@pytest.mark.parametrize("workers", [1, 2])  # 2: signatures checked in ingest workers
def test_enrolled_devices_take_part_and_strangers_are_refused(mosquitto, tmp_path, workers,
                                                              store_url):
    """On SQLite and on PostgreSQL: with 2 workers, each reads the keys through its own
    connection to the store (aggregator/ingest_workers.py EnrolledKeys)."""
    data = Digits(devices=3)
    where = {"db_url": store_url} if isinstance(store_url, str) else {}  # else the fleet's
    agg = _secure_aggregator(mosquitto, tmp_path, data, rounds=1,
                             sync=dataclasses.replace(make_aggregator_sync(), target_updates=2),
                             ingest=IngestConfig(workers=workers), **where)
    members = [_secure_client(mosquitto, tmp_path, data, i, agg) for i in range(2)]
    stranger = _secure_client(mosquitto, tmp_path, data, 2, agg, enroll=False)
    runs = [Running(agg.run, "aggregator")] + [Running(c.run, f"d{i}")
                                               for i, c in enumerate([*members, stranger])]
    for run in runs[:3]:
        run.join(60)
    runs[3].halt()
    assert agg.version == 1 and agg.history[1].devices == ("dev-0", "dev-1")
    from aggregator.store import Store
    store = Store(agg.config.store_location)  # what `fedge aggregator audit` reads
    assert {k[0] for k in store.update_keys()} == {"dev-0", "dev-1"}
    assert all(c.stats.acks["accepted"] == 1 for c in members)
    audit = store.audit(1)
    assert any("not enrolled" in r for _, _, r in store.rejections())  # the stranger
    store.close()
    assert [a["device_id"] for a in audit] == ["dev-0", "dev-1"]
    assert all(len(a["digest"]) == 64 and a["num_samples"] > 0 for a in audit)


def make_aggregator_sync():
    from aggregator.config import SyncConfig
    return SyncConfig(target_updates=3, round_timeout_s=30)


def _update(data: Digits, device: str, task_id: str, created_at: float | None = None):
    tensors = {k: np.zeros_like(v) for k, v in data.initial_weights().items()}
    return Update(device_id=device, task_id=task_id, nonce=os.urandom(16).hex(),
                  base_version=0, num_samples=3, tensors=tensors,
                  created_at=time.time() if created_at is None else created_at)


def _send(client, device: str, update: Update, signer: Identity | None) -> None:
    body = encode(update)
    message = body if signer is None else seal(body, signer)
    for chunk in split(message, update.nonce):
        publish(client, f"fedge/{FEDERATION}/update/{device}", chunk)


@pytest.fixture
def tls_broker():
    """mosquitto with the generated TLS, password and ACL setup (not pytest's tmp_path:
    the broker's own user must be able to walk to its files)."""
    folder = Path(tempfile.mkdtemp(prefix="fedge-test-tls-"))
    folder.chmod(0o755)
    port = free_port()
    files = write_broker_config(BrokerSecurityPlan(FEDERATION, ("alice", "bob", "mallory"),
                                                   port=port), folder / "broker")
    broker = MosquittoBroker.start_with_conf(files.conf, port)
    yield broker, files
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _tls_client(broker, files, user: str) -> mqtt.Client:
    """A paho client logged in as `user` over TLS: what a device (or a thief of its
    broker password) gets."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"test-{user}", protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(files.ca_cert))
    client.username_pw_set(user, files.credentials[user])
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_until(client.is_connected, 10, f"{user} to connect over TLS")
    return client


def test_over_tls_and_acls_forged_replayed_stale_and_foreign_updates_are_refused(
        tls_broker, tmp_path):
    broker, files = tls_broker
    data = Digits(devices=2)
    auth = BrokerAuth(ca_file=files.ca_cert, username="aggregator",
                      password_file=files.folder / "credentials" / "aggregator.txt")
    agg = _secure_aggregator(broker, tmp_path, data, rounds=1, broker_auth=auth,
                             sync=dataclasses.replace(make_aggregator_sync(), target_updates=2))
    alice = load_or_create_identity(tmp_path / "keys" / "alice.key")
    bob = load_or_create_identity(tmp_path / "keys" / "bob.key")
    mallory = load_or_create_identity(tmp_path / "keys" / "mallory.key")
    agg.store.enroll("alice", alice.public_text)
    agg.store.enroll("bob", bob.public_text)
    run = Running(agg.run, "aggregator")
    as_alice, as_bob, as_mallory = (_tls_client(broker, files, u)
                                    for u in ("alice", "bob", "mallory"))
    try:
        subscribe(as_alice, f"fedge/{FEDERATION}/model").get(timeout=10)  # aggregator is up
        agg.available.update({"alice", "bob"})  # as if both had reported themselves
        wait_until(lambda: agg.task is not None, 10, "a task")
        task_id = agg.task.task_id
        good = _update(data, "alice", task_id)
        _send(as_alice, "alice", good, alice)  # the real thing, accepted
        wait_until(lambda: len(_rows(agg.config.db_path)) == 1, 10, "alice's update")

        _send(as_alice, "alice", good, alice)  # replayed byte for byte
        # bob's broker password in a thief's hands, but not bob's signing key:
        _send(as_bob, "bob", _update(data, "bob", task_id), mallory)  # forged signature
        _send(as_bob, "bob", _update(data, "bob", task_id), None)  # unsigned
        _send(as_bob, "bob", _update(data, "bob", task_id, time.time() - 3600), bob)  # old
        _send(as_bob, "alice", _update(data, "alice", task_id), bob)  # alice's topic: ACL
        _send(as_mallory, "mallory", _update(data, "mallory", task_id), mallory)  # stranger
        wait_until(lambda: len(_reasons(agg.config.db_path)) == 4, 10, "four rejections")
        wait_until(lambda: agg.store.counter("duplicates") == 1, 10, "the replay counted")
        time.sleep(0.5)  # room for anything the ACL let through by mistake to arrive
    finally:
        for client in (as_alice, as_bob, as_mallory):
            close_client(client)
        run.halt()
    with sqlite3.connect(agg.config.db_path) as db:
        refused = sorted(db.execute("SELECT device_id, reason FROM rejections"))
    assert refused == [
        ("bob", "bad signature"),  # mallory's key
        ("bob", "update is not signed"),
        ("bob", "update time is -3600 s from the aggregator's clock (limit 300 s)"),
        ("mallory", "device 'mallory' is not enrolled, or was revoked"),
    ]  # the write to alice's topic never reached the aggregator: the broker's ACL dropped it
    assert _rows(agg.config.db_path) == [("alice", task_id, good.nonce)]  # nothing else


def test_devices_refuse_a_tampered_or_unsigned_manifest(mosquitto, tmp_path, caplog):
    data = Digits(devices=1)
    agg = _secure_aggregator(mosquitto, tmp_path, data, rounds=0)
    # Paused: it serves its signed version 0 and makes no other, so a device that moves
    # off version 0 below can only have taken a forged manifest (with training on, a
    # real version 1 would come within a second and move it).
    agg.set_training(False)
    device = _secure_client(mosquitto, tmp_path, data, 0, agg, exit_when_done=False)
    runs = [Running(agg.run, "aggregator"), Running(device.run, "device")]
    wait_until(lambda: device.model_version is not None, 20, "the signed model")
    held = device.model_version
    attacker = paho_client(mosquitto.host, mosquitto.port, "attacker")
    rogue = ModelManifest(version=99, sha256="0" * 64, size=10, chunk_count=1)
    impostor = Identity.generate()
    caplog.set_level(logging.WARNING, logger="edge_client.client")
    try:
        publish(attacker, f"fedge/{FEDERATION}/model", encode(rogue), retain=True)
        publish(attacker, f"fedge/{FEDERATION}/model", seal(encode(rogue), impostor),
                retain=True)
        wait_until(lambda: sum("ignored a bad message" in r.message for r in caplog.records)
                   >= 2, 10, "two refusals in the log")
    finally:
        close_client(attacker)
        for run in runs:
            run.halt()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "unsigned message refused" in messages and "bad signature" in messages
    assert device.model_version == held  # still the aggregator's model


def test_a_revoked_device_is_refused_from_the_next_task_on(mosquitto, tmp_path):
    data = Digits(devices=2)
    agg = _secure_aggregator(mosquitto, tmp_path, data, rounds=0,
                             sync=dataclasses.replace(make_aggregator_sync(), target_updates=2,
                                                      wait_for_devices_s=0.5,
                                                      min_fraction=0.5, round_timeout_s=2))
    clients = [_secure_client(mosquitto, tmp_path, data, i, agg, exit_when_done=False)
               for i in range(2)]
    # Paused at version 1 (on the loop, before it takes any update for round 2), so the
    # revocation lands while round 2 is open however late this thread gets to it.
    agg.on_version = lambda report: agg.set_training(False) if report.version == 1 else None
    runs = start_all(agg, clients)
    wait_until(lambda: agg.version >= 1 and agg.paused, 30, "round 1 with both devices")
    assert agg.history[1].devices == ("dev-0", "dev-1")
    agg.store.revoke("dev-1")  # as `fedge aggregator revoke` does, from any process
    agg.set_training(True)
    wait_until(lambda: agg.version >= 3, 30, "two more rounds")
    for run in runs:
        run.halt()
    later = [h.devices for h in agg.history[2:]]
    assert all(devices == ("dev-0",) for devices in later[1:]), later
