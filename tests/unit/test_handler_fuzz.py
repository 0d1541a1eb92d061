"""Fuzz the real handlers: the aggregator's event handling (plain, signed, secure
aggregation) and the device's message handling, fed mutated statuses, updates, chunks,
secagg messages, tasks, manifests and acks. The handlers must never raise, every ack
they send must decode on a device, and an honest update afterwards is still accepted.

The broker is a fake link (these are unit tests); tests/integration/test_hostile_input.py
does the same over a real mosquitto.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import msgpack
import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.inbound import core_event_of
from aggregator.limits import LimitsConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.service import Aggregator, now
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.secagg_session import DeviceSecAgg
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import (
    Ack,
    ModelManifest,
    RemoteProtocolError,
    Status,
    Task,
    Topics,
    TrainConfig,
    Update,
    decode,
    encode,
    split,
)
from edge_client.shared.protocol.errors import MAX_REASON
from edge_client.shared.protocol.signing import DOMAIN, is_signed, open_envelope, seal
from edge_client.shared.secagg.messages import AdvertiseKeys, MaskedInput
from edge_client.shared.secagg.task import SecAggTask
from edge_client.shared.security import AggregatorSecurity, DeviceSecurity
from edge_client.shared.transport import Inbound
from edge_client.training import mlp_trainer
from tests.mutations import Mutator

FED = "fz"
TOPICS = Topics(FED)
DEVICES = ("dev-0", "dev-1", "dev-2", "dev-3")
KEYS = {d: Identity.generate() for d in DEVICES}
SIZES = [4, 3]
WEIGHTS = mlp_trainer(SIZES, seed=0).get_weights()
CASES = 300


class FakeLink:
    """What the service and the device need of MqttLink, recording what they publish."""

    connected = True

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        self.published.append((topic, payload, retain))
        return True

    def subscribe(self, topic: str) -> None:
        pass

    def ack(self, event: object) -> None:
        pass

    def unsubscribe(self, topic: str) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, flush_timeout_s: float = 0.0) -> None:
        pass


# ---------------------------------------------------------------- the aggregator


def _aggregator(tmp_path, signed: bool, secagg: bool = False) -> Aggregator:
    security = (AggregatorSecurity(enabled=True, key_file=tmp_path / "agg.key") if signed
                else AggregatorSecurity())
    config = AggregatorConfig(
        federation=FED, db_path=tmp_path / "agg.sqlite3", rounds=0,
        sync=SyncConfig(target_updates=len(DEVICES), round_timeout_s=600),
        train=TrainConfig(epochs=1), security=security,
        secagg=SecAggConfig(enabled=secagg, phase_timeout_s=600, graph="complete"),
        # every refusal answered: the rate gate (test_rejection_gate.py) would hold back
        # most of a burst of hundreds from one device within a second
        limits=LimitsConfig(answered_rejections_per_device_s=1e9, answered_rejections_s=1e9))
    agg = Aggregator(config, initial_weights=WEIGHTS)
    agg.link = FakeLink()
    agg.store.db.execute("PRAGMA synchronous=OFF")  # thousands of rejections, fast
    for device in DEVICES:
        agg.store.enroll(device, KEYS[device].public_text)
    agg.available = set(DEVICES)  # not through statuses: those are fuzzed below
    agg.core.open_task(now())
    assert agg.core.state.task is not None and agg.core.state.task.expected() == DEVICES
    return agg


def _update(agg: Aggregator, device: str) -> Update:
    return Update(device_id=device, task_id=agg.core.state.task.task_id, nonce=os.urandom(16).hex(),
                  base_version=agg.version, num_samples=10,
                  tensors={k: np.full_like(v, 0.01) for k, v in WEIGHTS.items()},
                  metrics={"train_loss": 0.5}, created_at=time.time())


def _sealed(body: bytes, device: str, signed: bool) -> bytes:
    return _sign(body, KEYS[device]) if signed else body


def _sign(body: bytes, identity: Identity) -> bytes:
    """A valid envelope around any bytes, as a hostile key holder builds it (`seal`
    refuses to wrap what is not a fedge message)."""
    return msgpack.packb({"v": 1, "kind": "signed", "key_id": identity.key_id, "body": body,
                          "sig": identity.sign(DOMAIN + body)}, use_bin_type=True)


def _feed(agg: Aggregator, topic: str, payload: bytes, case: str) -> None:
    try:  # as the service's batch does, without its catch-all (the failure we look for)
        event = core_event_of(Inbound(topic, payload, retained=False), TOPICS, now)
        with agg.core.batch():
            actions = [] if event is None else agg.core.handle(event)
        agg._perform(actions)
    except Exception as exc:  # pragma: no cover - the failure we look for
        pytest.fail(f"{case}: the aggregator raised {type(exc).__name__}: {exc}")


def _acks(agg: Aggregator, device: str) -> list[Ack]:
    """Every ack sent to `device`, decoded as the device would (signed or not)."""
    out = []
    for topic, payload, _ in agg.link.published:
        if topic == TOPICS.ack(device):
            body = open_envelope(payload).body if is_signed(payload) else payload
            ack = decode(body, expect=Ack)
            assert isinstance(ack, Ack) and len(ack.reason) <= MAX_REASON
            out.append(ack)
    return out


def _fuzz_statuses_and_updates(agg: Aggregator, signed: bool, seed: int) -> None:
    mutator = Mutator(seed)
    status = encode(Status(device_id="dev-1", online=True, model_version=0, time=time.time()))
    for case in range(CASES):
        device = mutator.rng.choice(["dev-1", "dev-2", "dev-3", "mallory"])
        _feed(agg, TOPICS.status(device), mutator.mutate(status), f"status {case}")
        # A hostile body, whole and (in signed mode) validly signed by an enrolled key,
        # under its own nonce so that what decodes goes on to the checks and the store:
        update = _update(agg, device)
        valid = encode(update)
        signer = device if device in KEYS else "dev-1"
        body = mutator.mutate(valid) or b"\xc1"  # a truncation may leave nothing to split
        for chunk in split(_sealed(body, signer, signed), update.nonce, 4096):
            _feed(agg, TOPICS.update(device), chunk, f"update body {case}")
        # A hostile chunk of a good upload:
        chunk = split(_sealed(valid, signer, signed), update.nonce[:30] + "c", 1024)[0]
        _feed(agg, TOPICS.update(device), mutator.mutate(chunk), f"update chunk {case}")
        _feed(agg, f"fedge/{FED}/update/bad id", chunk, f"bad topic {case}")


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_the_aggregator_survives_hostile_statuses_and_updates(tmp_path, signed, caplog):
    agg = _aggregator(tmp_path, signed)
    caplog.set_level(logging.ERROR)
    _fuzz_statuses_and_updates(agg, signed, seed=13 + signed)
    assert not caplog.records, caplog.records[0].getMessage()  # no ERROR: no bug of ours
    rejected = _acks(agg, "dev-1") + _acks(agg, "mallory")
    assert len([a for a in rejected if a.status == "rejected"]) > CASES // 2
    agg.link.published.clear()
    honest = _update(agg, "dev-0")
    for chunk in split(_sealed(encode(honest), "dev-0", signed), honest.nonce, 4096):
        _feed(agg, TOPICS.update("dev-0"), chunk, "the honest update")
    assert [(a.status, a.nonce) for a in _acks(agg, "dev-0")] == [("accepted", honest.nonce)]
    assert agg.store.has_update("dev-0", honest.task_id)
    agg.store.close()


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_the_reported_bodies_are_rejected_with_a_reason(tmp_path, signed):
    """Issue 13: `kind: []` and num_samples 2**63, validly signed by an enrolled device,
    passed the signature check and crashed the service."""
    agg = _aggregator(tmp_path, signed)
    kind_list = msgpack.packb({"v": 1, "kind": []}, use_bin_type=True)
    huge = dataclasses.replace(_update(agg, "dev-1"), num_samples=2**63)
    for body, nonce in ((kind_list, "n" * 32), (encode(huge), huge.nonce)):
        for chunk in split(_sealed(body, "dev-1", signed), nonce, 4096):
            _feed(agg, TOPICS.update("dev-1"), chunk, "a reported body")
    reasons = [a.reason for a in _acks(agg, "dev-1")]
    assert [a.status for a in _acks(agg, "dev-1")] == ["rejected", "rejected"]
    assert "unknown message kind list of 0 items" in reasons[0]
    assert "num_samples" in reasons[1] and "must be <=" in reasons[1]
    _feed(agg, TOPICS.status("dev-1"), kind_list, "a status of kind []")
    status = Status(device_id="dev-1", online=True, model_version=2**63, time=1.0)
    _feed(agg, TOPICS.status("dev-1"), encode(status), "a status at 2**63")
    assert agg.store.devices() == []
    agg.store.close()


def test_the_secure_aggregation_service_survives_hostile_secagg_messages(tmp_path, caplog):
    agg = _aggregator(tmp_path, signed=True, secagg=True)
    task = agg.core.state.task
    caplog.set_level(logging.ERROR)
    mutator = Mutator(seed=7)
    valid = [AdvertiseKeys(task.task_id, "dev-1", b"c" * 32, b"s" * 32, b"h" * 32).to_bytes(),
             MaskedInput(task.task_id, "dev-1", b"m" * 8).to_bytes()]
    for case in range(CASES):
        body = mutator.mutate(mutator.rng.choice(valid)) or b"\xc1"
        device = mutator.rng.choice(["dev-1", "mallory"])
        signer = device if device in KEYS else "dev-1"
        for chunk in split(_sign(body, KEYS[signer]), f"sa-{case}", 4096):
            _feed(agg, TOPICS.secagg(device), chunk, f"secagg {case}")
        _feed(agg, TOPICS.secagg(device), mutator.mutate(split(body, f"sb-{case}", 1024)[0]),
              f"secagg chunk {case}")
    assert not caplog.records, caplog.records[0].getMessage()
    rejections = len(agg.store.rejections())
    assert rejections > CASES // 2
    # The honest device's real first message is still taken.
    honest = DeviceSecAgg("dev-0", TOPICS, 2**20, seal=lambda b: seal(b, KEYS["dev-0"]))
    for topic, chunk in honest.join(task, SecAggTask.from_wire(task.secagg),
                                    np.zeros(sum(w.size for w in WEIGHTS.values()))):
        _feed(agg, topic, chunk, "the honest advertisement")
    assert len(agg.store.rejections()) == rejections
    assert ("dev-0", AdvertiseKeys.KIND) in agg.secure.round._accepted
    agg.store.close()


def test_one_event_that_raises_is_logged_counted_and_the_loop_goes_on(tmp_path, caplog,
                                                                     monkeypatch):
    agg = _aggregator(tmp_path, signed=False)
    caplog.set_level(logging.WARNING, logger="aggregator.service")

    def refused(event):
        raise RemoteProtocolError("payload is not a map")

    monkeypatch.setattr(agg.core, "handle", refused)
    agg._handle_one(Inbound(TOPICS.status("dev-1"), b"\x90", retained=True))
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert TOPICS.status("dev-1") in record.getMessage() and "not a map" in record.getMessage()

    def bug(event):
        raise KeyError("ours")

    caplog.clear()
    monkeypatch.setattr(agg.core, "handle", bug)
    agg._handle_one(Inbound(TOPICS.update("dev-1"), b"x", retained=False))
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert agg.store.counter("bad_messages") == 2
    agg.store.close()


# ---------------------------------------------------------------- the device


def _client(tmp_path, pinned: Identity | None) -> EdgeClient:
    security = DeviceSecurity(aggregator_key=pinned.public_text if pinned else None)
    config = ClientConfig(device_id="dev-0", federation=FED, state_dir=tmp_path / "dev",
                          eligibility=EligibilityConfig(enabled=False), security=security)
    x = np.zeros((4, SIZES[0]), np.float32)
    client = EdgeClient(config, mlp_trainer(SIZES, seed=0), x, np.zeros(4, np.int64))
    client.link = FakeLink()
    return client


@pytest.mark.parametrize("pinned", [False, True], ids=["plain", "pinned"])
def test_the_device_survives_hostile_tasks_manifests_chunks_and_acks(tmp_path, pinned):
    aggregator = Identity.generate()
    client = _client(tmp_path, aggregator if pinned else None)
    sign = (lambda b: _sign(b, aggregator)) if pinned else (lambda b: b)
    task = Task("r1-abc", "sync", 1, 0, TrainConfig(), deadline=time.time() + 60,
                invited=("dev-0", "dev-1"), codec={"sparsify": "none"},
                secagg={"v": 1})
    manifest = ModelManifest(version=3, sha256="0" * 64, size=500, chunk_count=1)
    ack = Ack(status="rejected", task_id="r1-abc", nonce="n" * 32, reason="no")
    chunk = split(b"model bytes" * 30, "model-3", 512)[0]
    valid = {TOPICS.task: encode(task), TOPICS.model: encode(manifest),
             TOPICS.ack("dev-0"): encode(ack)}
    mutator = Mutator(seed=5 + pinned)
    for case in range(CASES):
        for topic, payload in valid.items():
            _to_device(client, topic, sign(mutator.mutate(payload)), f"{topic} {case}")
        _to_device(client, TOPICS.model, sign(valid[TOPICS.model]), "manifest")
        _to_device(client, TOPICS.model_chunk(3, 0), mutator.mutate(chunk), f"chunk {case}")
        _to_device(client, TOPICS.secagg_to("dev-0"), mutator.mutate(chunk), f"secagg {case}")
    good = dataclasses.replace(task, task_id="r2-good", codec=None, secagg=None)
    _to_device(client, TOPICS.task, sign(encode(good)), "the honest task")
    assert client.task == good


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _to_device(client: EdgeClient, topic: str, payload: bytes, case: str) -> None:
    """Deliver one message; a bad one is refused (RemoteProtocolError, logged as a
    warning), and anything else raised on the way is a bug (logged with its traceback)."""
    seen = _Records()
    logging.getLogger("edge_client").addHandler(seen)
    try:
        client.receive(topic, payload)
    finally:
        logging.getLogger("edge_client").removeHandler(seen)
    bugs = [r for r in seen.records if r.exc_info]
    if bugs:  # pragma: no cover - the failure we look for
        pytest.fail(f"{case}: the device raised: {bugs[0].getMessage()}")


def test_the_device_loop_survives_an_unexpected_error(tmp_path, caplog, monkeypatch):
    client = _client(tmp_path, None)
    caplog.set_level(logging.WARNING, logger="edge_client.client")

    def bug(topic, payload, now):
        raise KeyError("ours")

    monkeypatch.setattr(client.session, "receive", bug)
    client.receive(TOPICS.task, b"x")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert client.stats.bad_messages == 1
