"""Secure aggregation over a real mosquitto: whole federations whose versions come from
masked sums. The sum is exact, the aggregator never stores (or receives) an unmasked
input, dropouts after masking still give the survivors' sum, random-k masks the shared
coordinates only, distributed DP rides on the secure sum, and forged or plain messages
are refused."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.config import DownlinkConfig, SyncConfig
from aggregator.privacy import PrivacyConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.store import Store
from edge_client.shared.identity import load_or_create_identity
from edge_client.shared.protocol import Model, Task, Update, decode, encode, split
from edge_client.shared.protocol.signing import seal
from edge_client.shared.protocol.tensors import flatten_sorted
from edge_client.shared.secagg import Phase
from edge_client.shared.secagg.messages import AdvertiseKeys
from edge_client.shared.secagg.prg import modulus_mask, to_wire
from edge_client.shared.secagg.task import SecAggTask
from edge_client.shared.security import AggregatorSecurity, DeviceSecurity
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


@pytest.fixture(scope="module")
def digits6() -> Digits:
    return Digits(devices=6)


@pytest.fixture(scope="module")
def digits10() -> Digits:
    return Digits(devices=10)


def _federation(broker, tmp_path, data, devices: int, rounds: int, secagg: SecAggConfig,
                min_fraction: float = 0.6, **overrides):
    agg = make_aggregator(broker, tmp_path, data, rounds=rounds, secagg=secagg,
                          downlink=DownlinkConfig(delta=False),
                          sync=SyncConfig(target_updates=devices, round_timeout_s=30,
                                          min_fraction=min_fraction), **overrides)
    clients = [make_client(broker, tmp_path, data, i) for i in range(devices)]
    inputs: dict[tuple[str, str], np.ndarray] = {}  # (task, device) -> fixed-point input
    for c in clients:
        c.secagg.on_input = lambda task, x, d=c.config.device_id: inputs.__setitem__((task, d), x)
    return agg, clients, inputs


def _rounds(db_path) -> dict[int, Task]:
    """The closed task of each version: the round that made it."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT round, message FROM tasks WHERE state='closed'").fetchall()
    return {r: decode(m, expect=Task) for r, m in rows}


def _models(db_path) -> dict[int, np.ndarray]:
    store = Store(db_path)
    rows = store.db.execute("SELECT version, blob FROM models").fetchall()
    store.close()
    return {v: flatten_sorted(decode(b, expect=Model).tensors) for v, b in rows}


def _stored_bytes(db_path) -> bytes:
    wal = db_path.with_name(db_path.name + "-wal")
    return db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _windows(x: np.ndarray, bits: int, width: int = 32) -> list[bytes]:
    """Pieces of an input's wire bytes with varied values: any one of them in the store
    or on the wire would be an unmasked input leaking."""
    raw = to_wire(x, bits)
    return [raw[i:i + width] for i in range(0, len(raw) - width, width)
            if len(set(raw[i:i + width])) > width // 4][:20]


def _spy(broker):
    client = paho_client(broker.host, broker.port, "test-spy")
    return client, subscribe(client, f"fedge/{FEDERATION}/secagg/+")


def _spied(spy, uplink) -> list[bytes]:
    """Every secagg payload the spy got, once all have reached it, then the spy closed.

    Runs that ended do not mean the spy's own thread has read its socket: a last message
    may still be on its way. mosquitto queues a message to every subscriber before it
    acknowledges it, and the devices had theirs acknowledged before they stopped, so a
    message the spy publishes now comes in behind all of them.
    """
    barrier = f"fedge/{FEDERATION}/secagg/test-spy-barrier"
    publish(spy, barrier, b"barrier")
    payloads = []
    while (message := uplink.get(timeout=10)).topic != barrier:
        payloads.append(message.payload)
    close_client(spy)
    return payloads


def test_versions_are_the_exact_mean_of_masked_inputs_and_nothing_unmasked_is_stored(
        mosquitto, tmp_path, digits6):
    spy, uplink = _spy(mosquitto)
    agg, clients, inputs = _federation(mosquitto, tmp_path, digits6, devices=6, rounds=3,
                                       secagg=SecAggConfig(enabled=True, clip=0.5,
                                                           phase_timeout_s=10))
    initial = digits6.accuracy(agg.global_weights)
    for run in start_all(agg, clients):
        run.join(60)
    received = _spied(spy, uplink)
    assert agg.version == 3
    assert digits6.accuracy(agg.global_weights) > initial + 0.3
    rounds, models = _rounds(agg.config.db_path), _models(agg.config.db_path)
    for version in (1, 2, 3):
        task = rounds[version]
        settings = SecAggTask.from_wire(task.secagg)
        info = agg.history[version].secagg
        assert info["contributors"] == 6 and info["dropped"] == 0
        total = sum(inputs[(task.task_id, d)] for d in task.invited)
        ring = np.asarray(total, np.uint64) & modulus_mask(settings.bits)
        mean = settings.fixed_point(6).decode_sum(ring, 6) / 6  # the plain mean, exactly
        assert np.allclose(models[version] - models[version - 1], mean, atol=2e-6)
        if version == 3:  # the sum the aggregator unmasked is that sum, bit for bit
            assert np.array_equal(agg.secure.last_result.total, ring)
    stored = _stored_bytes(agg.config.db_path)
    assert len(received) >= 3 * 6 * 4  # every phase of every device went through the broker
    assert len(inputs) == 18
    for (task_id, _), x in inputs.items():
        bits = SecAggTask.from_wire(next(t for t in rounds.values()
                                         if t.task_id == task_id).secagg).bits
        for window in _windows(x, bits):
            assert window not in stored
            assert not any(window in payload for payload in received)
    with sqlite3.connect(agg.config.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 0
        states = db.execute("SELECT state, masked_count FROM secagg_rounds").fetchall()
    assert states == [("done", 6)] * 3


def test_a_third_of_devices_dropping_after_masking_still_gives_the_survivors_sum(
        mosquitto, tmp_path, digits10):
    # 5 s per phase: the 7 devices that do answer must make every deadline on a loaded
    # 2-core machine, or they count as dropouts too and the counts below are off
    agg, clients, inputs = _federation(mosquitto, tmp_path, digits10, devices=10, rounds=1,
                                       min_fraction=0.5,
                                       secagg=SecAggConfig(enabled=True, phase_timeout_s=5))
    for c in clients[1:3]:  # share keys, then go silent: their masks must be taken out
        c.secagg.silent_from = Phase.MASKED_INPUT
    clients[5].secagg.silent_from = Phase.UNMASKING  # its masked input is in, then it goes
    runs = start_all(agg, clients)
    for run in runs:
        run.join(60)
    assert agg.version == 1
    info = agg.history[1].secagg
    assert (info["contributors"], info["dropped"], info["unmask_missing"]) == (8, 2, 1)
    task = _rounds(agg.config.db_path)[1]
    survivors = [d for d in task.invited if d not in ("dev-1", "dev-2")]
    assert list(agg.secure.last_result.contributors) == survivors
    bits = SecAggTask.from_wire(task.secagg).bits
    expected = sum(inputs[(task.task_id, d)] for d in survivors)
    assert np.array_equal(agg.secure.last_result.total,
                          np.asarray(expected, np.uint64) & modulus_mask(bits))
    assert list(agg.history[1].devices or ()) == survivors


def test_random_k_rounds_with_distributed_dp_move_only_the_shared_coordinates(
        mosquitto, tmp_path, digits6):
    privacy = PrivacyConfig(mode="distributed", clip=0.5, noise_multiplier=0.3)
    agg, clients, inputs = _federation(
        mosquitto, tmp_path, digits6, devices=4, rounds=2, privacy=privacy,
        secagg=SecAggConfig(enabled=True, clip=2.0, sparsify="randk", fraction=0.3,
                            phase_timeout_s=10))
    spy, uplink = _spy(mosquitto)
    for run in start_all(agg, clients):
        run.join(60)
    received = _spied(spy, uplink)
    assert agg.version == 2
    rounds, models = _rounds(agg.config.db_path), _models(agg.config.db_path)
    for version in (1, 2):
        settings = SecAggTask.from_wire(rounds[version].secagg)
        kept = settings.coordinates()
        assert settings.dim == kept.size == round(0.3 * settings.size)
        change = models[version] - models[version - 1]
        assert np.count_nonzero(np.delete(change, kept)) == 0 and np.any(change[kept])
        total = sum(inputs[(rounds[version].task_id, d)] for d in rounds[version].invited)
        ring = np.asarray(total, np.uint64) & modulus_mask(settings.bits)
        dp_mean = settings.fixed_point(4).decode_sum(ring, 4) / 4  # cohort m = 4: the same
        assert np.allclose(change[kept], dp_mean, atol=2e-6)
        history = agg.history[version]
        assert history.metric("dp_mode") == "distributed" and history.epsilon > 0
        assert rounds[version].dp is not None
    assert agg.history[2].epsilon > agg.history[1].epsilon
    words = {len(payload) for payload in received}
    assert max(words) < 4 * settings.size  # no message carries a dense 32-bit vector


def test_forged_secagg_messages_and_plain_updates_are_refused_and_the_round_goes_on(
        mosquitto, tmp_path, digits6):
    keys = tmp_path / "keys"
    agg = make_aggregator(mosquitto, tmp_path, digits6, rounds=1,
                          security=AggregatorSecurity(enabled=True,
                                                      key_file=keys / "aggregator.key"),
                          secagg=SecAggConfig(enabled=True, phase_timeout_s=10),
                          sync=SyncConfig(target_updates=3, round_timeout_s=30,
                                          min_fraction=1.0))
    clients = []
    for i in range(3):
        security = DeviceSecurity(key_file=keys / f"dev-{i}.key",
                                  aggregator_key=agg.identity.public_text)
        clients.append(make_client(mosquitto, tmp_path, digits6, i, security=security))
        agg.store.enroll(f"dev-{i}", clients[-1].identity.public_text)
    mallory = load_or_create_identity(keys / "mallory.key")
    attacker = paho_client(mosquitto.host, mosquitto.port, "test-mallory")
    manifests = subscribe(attacker, f"fedge/{FEDERATION}/model")
    runs = [Running(agg.run, "aggregator")]
    manifests.get(10)  # the aggregator subscribes before it publishes its model
    forged = AdvertiseKeys(round_id="r1-whatever", device_id="dev-1", c_pk=bytes(32),
                           s_pk=bytes(32), seed_commitment=bytes(32)).to_bytes()
    for chunk in split(seal(forged, mallory), "forged-1"):  # signed, by the wrong key
        publish(attacker, f"fedge/{FEDERATION}/secagg/dev-1", chunk)
    for chunk in split(forged, "forged-2"):  # not signed at all
        publish(attacker, f"fedge/{FEDERATION}/secagg/dev-1", chunk)
    update = Update(device_id="dev-0", task_id="r1-any", nonce="plain-1", base_version=0,
                    num_samples=5, tensors=digits6.initial_weights(), created_at=time.time())
    for chunk in split(seal(encode(update), clients[0].identity), "plain-1"):
        publish(attacker, f"fedge/{FEDERATION}/update/dev-0", chunk)  # an old device's
    wait_until(lambda: len(agg.store.rejections()) >= 3, 10, "three rejections")
    runs += [Running(c.run, c.config.device_id) for c in clients]
    for run in runs:
        run.join(60)
    close_client(attacker)
    assert agg.version == 1 and agg.history[1].secagg["contributors"] == 3
    reasons = [(d, n, r) for d, n, r in Store(agg.config.db_path).rejections()]
    assert ("dev-1", "secagg", "bad signature") in reasons
    assert any(d == "dev-1" and n == "secagg" and "not signed" in r for d, n, r in reasons)
    assert any(d == "dev-0" and "secure aggregation" in r for d, _, r in reasons)
    assert Store(agg.config.db_path).count_updates() == 0


def test_an_aggregator_restart_mid_round_aborts_that_round_and_the_next_one_completes(
        mosquitto, tmp_path, digits6):
    secagg = SecAggConfig(enabled=True, phase_timeout_s=60)
    agg, clients, _ = _federation(mosquitto, tmp_path, digits6, devices=4, rounds=1,
                                  min_fraction=0.75, secagg=secagg)
    for c in clients:  # keys go out, then the round waits for shares that never come
        c.secagg.silent_from = Phase.SHARE_KEYS
    first = Running(agg.run, "aggregator")
    devices = [Running(c.run, c.config.device_id) for c in clients]
    wait_until(lambda: agg.secure.round is not None
               and agg.secure.round.phase is Phase.SHARE_KEYS, 30, "phase 1 of round 1")
    stuck = agg.secure.round.task.task_id
    first.halt()
    for c in clients:
        c.secagg.silent_from = None
    again, _, _ = _federation(mosquitto, tmp_path, digits6, devices=4, rounds=1,
                              min_fraction=0.75, secagg=secagg)
    for run in [Running(again.run, "aggregator again"), *devices]:
        run.join(60)
    assert again.version == 1 and again.history[1].secagg["contributors"] == 4
    with sqlite3.connect(again.config.db_path) as db:
        state = db.execute("SELECT state FROM tasks WHERE task_id=?", (stuck,)).fetchone()
        rows = db.execute("SELECT task_id, state, info FROM secagg_rounds "
                          "ORDER BY opened_at").fetchall()
    assert state == ("aborted",)
    assert [(t, st) for t, st, _ in rows] == [(stuck, "aborted"), (rows[1][0], "done")]
    assert "restarted" in rows[0][2]


@pytest.fixture
def acl_broker():
    """mosquitto with the generated TLS, passwords and per-device ACL (under /tmp: the
    broker's own user must be able to walk to its files)."""
    folder = Path(tempfile.mkdtemp(prefix="fedge-test-secagg-acl-"))
    folder.chmod(0o755)
    port = free_port()
    files = write_broker_config(BrokerSecurityPlan(FEDERATION, ("dev-1", "dev-2"), port=port),
                                folder / "broker")
    broker = MosquittoBroker.start_with_conf(files.conf, port)
    yield broker, files
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _login(broker, files, user: str):
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"test-acl-{user}", protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(files.ca_cert))
    client.username_pw_set(user, files.credentials[user])
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_until(client.is_connected, 10, f"{user} to connect")
    return client


def test_the_broker_lets_a_device_write_only_its_own_secagg_topic_and_read_only_its_relay(
        acl_broker):
    broker, files = acl_broker
    aggregator, dev1 = _login(broker, files, "aggregator"), _login(broker, files, "dev-1")
    try:
        to_aggregator = subscribe(aggregator, f"fedge/{FEDERATION}/secagg/+")
        to_dev1 = subscribe(dev1, f"fedge/{FEDERATION}/#")  # granted; filtered by `read`
        for topic in ("secagg/dev-2", "secagg_to/dev-2", "secagg_to/dev-1", "secagg/dev-1"):
            publish(dev1, f"fedge/{FEDERATION}/{topic}", f"dev-1 on {topic}".encode())
        for device in ("dev-2", "dev-1"):
            publish(aggregator, f"fedge/{FEDERATION}/secagg_to/{device}", device.encode())
        arrived = to_aggregator.get()
        assert (arrived.topic, arrived.payload) == (f"fedge/{FEDERATION}/secagg/dev-1",
                                                    b"dev-1 on secagg/dev-1")
        relayed = to_dev1.get()
        assert (relayed.topic, relayed.payload) == (f"fedge/{FEDERATION}/secagg_to/dev-1",
                                                    b"dev-1")
        time.sleep(0.5)  # anything the ACL let through by mistake would be here by now
        assert to_aggregator.drain() == [] and to_dev1.drain() == []
    finally:
        close_client(aggregator)
        close_client(dev1)
