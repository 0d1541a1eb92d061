"""Fake statuses through a real mosquitto: in secure mode only a device's own signed,
fresh status makes it available; in plain mode ghost devices cannot hold an honest
federation's rounds, and retained junk is cleared once instead of re-read at every start."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time

import numpy as np
import pytest

from aggregator.config import SyncConfig
from aggregator.presence import PresenceConfig
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.identity import load_or_create_identity
from edge_client.shared.protocol import Status, Task, Update, decode, encode, split
from edge_client.shared.protocol.signing import open_envelope, seal, verify_envelope
from edge_client.shared.security import BrokerAuth, DeviceSecurity
from edge_client.training import mlp_trainer
from tests.integration.fleet import (
    FEDERATION,
    Digits,
    Running,
    make_aggregator,
    make_client,
    wait_until,
)
from tests.integration.test_signing_live import (  # noqa: F401 (tls_broker: a fixture)
    _secure_aggregator,
    _tls_client,
    tls_broker,
)
from tests.mqtt_helpers import close_client, paho_client, publish

pytestmark = pytest.mark.integration


def _status_topic(device: str) -> str:
    return f"fedge/{FEDERATION}/status/{device}"


def _status(device: str, at: float | None = None, online: bool = True) -> bytes:
    return encode(Status(device_id=device, online=online, eligible=True,
                         time=time.time() if at is None else at))


def _rows(db_path, query: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(query, args).fetchall()


def _counter(db_path, name: str) -> int:
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
    return 0 if row is None else row[0]


def test_secure_mode_believes_only_a_devices_own_fresh_signed_status(
        tls_broker, tmp_path):  # noqa: F811
    broker, files = tls_broker
    data = Digits(devices=1)
    auth = BrokerAuth(ca_file=files.ca_cert, username="aggregator",
                      password_file=files.folder / "credentials" / "aggregator.txt")
    agg = _secure_aggregator(broker, tmp_path, data, rounds=0, broker_auth=auth)
    agg.set_training(False)  # statuses only: no rounds
    bob = load_or_create_identity(tmp_path / "keys" / "bob.key")
    mallory = load_or_create_identity(tmp_path / "keys" / "mallory.key")
    agg.store.enroll("bob", bob.public_text)
    alice = EdgeClient(ClientConfig(
        device_id="alice", federation=FEDERATION, host=broker.host, port=broker.port,
        state_dir=tmp_path / "alice", eligibility=EligibilityConfig(enabled=False),
        exit_when_done=False,
        security=DeviceSecurity(key_file=tmp_path / "keys" / "alice.key",
                                aggregator_key=agg.identity.public_text),
        broker_auth=BrokerAuth(ca_file=files.ca_cert, username="alice",
                               password_file=files.folder / "credentials" / "alice.txt")),
        mlp_trainer(data.sizes), *data.shards[0])
    agg.store.enroll("alice", alice.identity.public_text)
    db = agg.config.db_path
    runs = [Running(agg.run, "aggregator")]
    thief = _tls_client(broker, files, "bob")  # bob's broker password, not bob's key
    try:
        wait_until(lambda: agg.link.connected, 10, "the aggregator to connect")
        runs.append(Running(alice.run, "alice"))  # the real device signs its statuses
        wait_until(lambda: "alice" in agg.available, 10, "alice's signed status")
        for payload in (_status("bob"),  # unsigned
                        seal(_status("bob"), mallory),  # forged
                        seal(_status("bob", at=time.time() - 3600), bob)):  # old capture
            publish(thief, _status_topic("bob"), payload, retain=True)
        wait_until(lambda: _counter(db, "statuses_refused") == 3, 10, "three refusals")
        assert "bob" not in agg.available
        fresh = seal(_status("bob"), bob)
        publish(thief, _status_topic("bob"), fresh, retain=True)
        wait_until(lambda: "bob" in agg.available, 10, "bob's own signed status")
        publish(thief, _status_topic("bob"), seal(_status("bob", online=False), bob))
        wait_until(lambda: "bob" not in agg.available, 10, "bob offline")
        publish(thief, _status_topic("bob"), fresh)  # replayed: bob is not back
        wait_until(lambda: _counter(db, "statuses_refused") == 4, 10, "the replay refused")
        assert "bob" not in agg.available and "alice" in agg.available

        seen: list[Status] = []  # what the aggregator user reads on alice's status topic
        watcher = _tls_client(broker, files, "aggregator")
        watcher.on_message = lambda _c, _u, m: m.payload and seen.append(decode(
            verify_envelope(open_envelope(m.payload), alice.identity.public_bytes)))
        watcher.subscribe(_status_topic("alice"), 1)
        wait_until(lambda: len(seen) >= 1, 10, "alice's retained status")
        alice.link.drop_connection()  # a lost link: the broker publishes her sealed will
        wait_until(lambda: any(not s.online for s in seen), 10, "alice's will")
        wait_until(lambda: seen[-1].online and "alice" in agg.available, 10, "alice back")
        close_client(watcher)
        assert _counter(db, "statuses_refused") == 4  # her will was taken, not refused
    finally:
        close_client(thief)
        for run in reversed(runs):
            run.halt()


def _send_update(client, data: Digits, device: str, task_id: str) -> None:
    tensors = {k: np.zeros_like(v) for k, v in data.initial_weights().items()}
    update = Update(device_id=device, task_id=task_id, nonce=os.urandom(16).hex(),
                    base_version=0, num_samples=3, tensors=tensors, created_at=time.time())
    for chunk in split(encode(update), update.nonce):
        publish(client, f"fedge/{FEDERATION}/update/{device}", chunk)


def _retained(broker, topic_filter: str, quiet_s: float = 0.5) -> dict[str, bytes]:
    """The retained messages under a filter, as a new subscriber gets them."""
    got: dict[str, bytes] = {}
    client = paho_client(broker.host, broker.port, f"peek-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, m: got.__setitem__(m.topic, bytes(m.payload))
    try:
        client.subscribe(topic_filter, 1)
        time.sleep(quiet_s)
    finally:
        close_client(client)
    return {t: p for t, p in got.items() if p}


def _invitations(db_path) -> list[tuple[str, ...]]:
    """Who the rounds that ended invited, as the aggregator planned them (a task's
    message carries a cohort, not the ids: docs/protocol.md)."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT m.members FROM tasks t JOIN task_members m USING "
                          "(task_id) WHERE t.state != 'open' ORDER BY t.opened_at").fetchall()
    return [tuple(json.loads(r[0])) for r in rows]


def _outsider_of_a_closed_round(db_path) -> tuple[str, str]:
    """A closed round, and a device id its cohort leaves out (not one that invited
    every device)."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT task_id, message FROM tasks WHERE state = 'closed' "
                          "ORDER BY opened_at").fetchall()
    for task_id, message in rows:
        task = decode(message, expect=Task)
        outsider = next((f"mallory-{i}" for i in range(200)
                         if not task.invites(f"mallory-{i}")), None)
        if outsider is not None:
            return task_id, outsider
    raise AssertionError("every closed round invited every device")


def _trained_by_invitation(db_path) -> list[tuple[str, str]]:
    """(task, device) of updates stored from devices a closed round invited by name: by
    an invitation on their own topic, outside the task's cohort, not listed in it."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT t.task_id, t.message, m.members FROM tasks t JOIN "
                          "task_members m USING (task_id) WHERE t.state = 'closed'").fetchall()
        stored = set(db.execute("SELECT task_id, device_id FROM updates").fetchall())
    found = []
    for task_id, message, members in rows:
        task = decode(message, expect=Task)
        assert task.invited is None  # no names in a plain round's task
        named = [d for d in json.loads(members) if not task.invites(d)]
        found += [(task_id, d) for d in named if (task_id, d) in stored]
    return found


def _states(db_path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [r[0] for r in db.execute("SELECT state FROM tasks")]


def test_plain_mode_ghosts_cannot_hold_rounds_and_retained_junk_is_read_once(
        mosquitto, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggregator")
    data = Digits(devices=3)
    ghosts = [f"ghost-{i:03d}" for i in range(300)]
    junk = [f"junk-{i}" for i in range(10)]
    attacker = paho_client(mosquitto.host, mosquitto.port, "attacker")
    for device in junk:  # retained junk on update and status topics, before any start
        publish(attacker, f"fedge/{FEDERATION}/update/{device}", b"\x00junk", retain=True)
        publish(attacker, _status_topic(device), b"\x00junk", retain=True)
    presence = PresenceConfig(max_no_shows=1, no_show_backoff_s=0.5, max_newcomers=30)
    sync = SyncConfig(target_updates=3, round_timeout_s=10)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=0, presence=presence, sync=sync)
    db = agg.config.db_path
    clients = [make_client(mosquitto, tmp_path, data, i, exit_when_done=False,
                           ack_timeout_s=2) for i in range(3)]  # quick resends after restart
    runs = [Running(agg.run, "aggregator")]
    runs += [Running(c.run, c.config.device_id) for c in clients]
    try:
        wait_until(lambda: agg.version >= 1, 20, "the first version, before any ghost")
        for device in ghosts:  # "online, eligible", retained, none of them real
            publish(attacker, _status_topic(device), _status(device), retain=True)
        wait_until(lambda: agg.version >= 12, 20, "eleven versions beside the ghosts")
        closed, mallory = _outsider_of_a_closed_round(db)
        _send_update(attacker, data, mallory, closed)  # never invited to that round
        wait_until(lambda: _rows(db, "SELECT reason FROM rejections WHERE device_id = ?",
                                 (mallory,)) == [("device was not invited to this round",)],
                   10, "mallory's late update refused")
        runs[0].halt()
        invited = [d for task in _invitations(db) for d in task if d.startswith("ghost")]
        assert invited, "the ghosts were never tried: the test shows nothing"
        assert len(invited) == len(set(invited))  # each ghost invited once at most
        assert "aborted" not in _states(db)  # no round waited for a ghost
        assert _trained_by_invitation(db), "no device trained by invitation: shows nothing"
        assert "benched" in caplog.text
        refused = (_counter(db, "statuses_refused"), len(_rows(db, "SELECT * FROM rejections")))
        assert refused == (10, 11)  # every junk message refused once, and mallory
        left = _retained(mosquitto, f"fedge/{FEDERATION}/#")
        assert not any("junk" in topic for topic in left)  # cleared from the broker
        cleared = {r.getMessage().rsplit("/", 1)[1] for r in caplog.records
                   if "cleared the retained message on" in r.getMessage()
                   and "/status/ghost" in r.getMessage()}
        assert cleared and cleared <= set(invited)  # benched, backoff over: cleared
        assert sorted(t for t in left if "ghost" in t) == sorted(
            _status_topic(g) for g in ghosts if g not in cleared)

        again = make_aggregator(mosquitto, tmp_path, data, rounds=0, presence=presence,
                                sync=sync)  # a restart: same store, same broker
        runs[0] = Running(again.run, "aggregator again")
        start = again.version
        wait_until(lambda: again.version >= start + 2, 20, "two more versions")
        assert (_counter(db, "statuses_refused"),
                len(_rows(db, "SELECT * FROM rejections"))) == refused
        ghost_rows = _rows(db, "SELECT device_id FROM devices WHERE device_id LIKE 'ghost%'")
        assert len(ghost_rows) <= presence.max_newcomers  # the devices table stays bounded
    finally:
        close_client(attacker)
        for run in reversed(runs):
            run.halt()
