"""Parallel ingest without a broker: a worker's sans-IO part (chunks in, a verified and
decoded update or a refusal out), the writer's handling of its results, the config key,
and the supervisor starting a dead worker again."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.core import Instant, RefusedUpload, SendAck, VerifiedUpdate
from aggregator.ingest import open_flat_update
from aggregator.ingest_batch import max_workers
from aggregator.ingest_worker import WorkerIngest, owner_of
from aggregator.ingest_workers import EnrolledKeys, IngestWorkers, layout_of, weights_of
from aggregator.store import Store
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import Update, encode
from edge_client.shared.protocol.chunking import split
from edge_client.shared.protocol.signing import seal
from edge_client.shared.security import AggregatorSecurity
from edge_client.shared.settings import ConfigError
from tests.unit.test_aggregator_core import FED, TOPICS, WEIGHTS, Harness, update


def _update(device: str = "dev-0", nonce: str = "n-1", **changes) -> Update:
    fields = dict(device_id=device, task_id="t-1", nonce=nonce, base_version=0,
                  num_samples=10, created_at=time.time(),
                  tensors={k: np.full_like(v, 0.25) for k, v in WEIGHTS.items()},
                  metrics={"train_s": 0.5})
    fields.update(changes)
    return Update(**fields)


def _worker(tmp_path, security: bool = False, keys=None) -> WorkerIngest:
    config = AggregatorConfig(federation=FED, db_path=tmp_path / "agg.sqlite3",
                              security=AggregatorSecurity(enabled=security))
    return WorkerIngest(config, weights_of(layout_of(WEIGHTS)), keys or (lambda d: None))


def _feed(worker: WorkerIngest, device: str, message: bytes, transfer: str,
          shuffle: bool = False) -> list:
    chunks = split(message, transfer, 300)
    if shuffle:
        chunks.reverse()
    out = [worker.on_chunk(TOPICS.update(device), c, _now()) for c in chunks]
    return [r for r in out if r is not None]


def _now() -> Instant:
    return Instant(wall=time.time(), mono=time.monotonic())


def test_owners_are_stable_and_spread():
    devices = [f"dev-{i}" for i in range(1000)]
    owners = [owner_of(d, 4) for d in devices]
    assert owners == [owner_of(d, 4) for d in devices]  # no salted hash
    assert all(150 < owners.count(w) < 350 for w in range(4))
    assert {owner_of(d, 1) for d in devices} == {0}


def test_chunks_in_any_order_become_one_decoded_update(tmp_path):
    worker = _worker(tmp_path)
    sent = _update()
    message = encode(sent)
    [result] = _feed(worker, "dev-0", message, sent.nonce, shuffle=True)
    assert isinstance(result, VerifiedUpdate)
    assert (result.device, result.transfer, result.payload) == ("dev-0", "n-1", message)
    _, expected = open_flat_update(message, WEIGHTS)
    assert np.array_equal(result.values.values, expected.values)
    assert result.update.num_samples == 10 and result.update.metrics == {"train_s": 0.5}


def test_a_worker_refuses_what_the_service_would_refuse(tmp_path):
    worker = _worker(tmp_path)
    bad_shape = _update(tensors={"b": np.zeros(3, np.float32), "w": np.zeros(3, np.float32)})
    [shape] = _feed(worker, "dev-0", encode(bad_shape), "n-1")
    assert isinstance(shape, RefusedUpload) and shape.verified and "shape" in shape.reason
    other = _update(device="dev-9", nonce="n-2")
    [sender] = _feed(worker, "dev-0", encode(other), "n-2")
    assert isinstance(sender, RefusedUpload) and "dev-9" in sender.reason
    # A transfer over the size limit is answered once, not once per chunk.
    worker.assembler.max_payload = 400
    big = _update(nonce="n-3")
    chunks = split(encode(big) + b"\0" * 600, "n-3", 300)
    refused = [worker.on_chunk(TOPICS.update("dev-0"), c, _now()) for c in chunks]
    assert len(chunks) > 2 and [type(r) for r in refused if r] == [RefusedUpload]
    assert worker.on_chunk("fedge/core/update/bad device", b"x", _now()) is None


def test_signatures_are_checked_against_the_key_in_the_store(tmp_path, store_url):
    identity = Identity.generate()
    store = Store(store_url)  # SQLite, or PostgreSQL: the worker's own session either way
    store.enroll("dev-0", identity.public_text)
    store.enroll("dev-1", Identity.generate().public_text)
    keys = EnrolledKeys(store_url)
    worker = _worker(tmp_path, security=True, keys=keys.key_of)
    sent = _update()
    [ok] = _feed(worker, "dev-0", seal(encode(sent), identity), sent.nonce)
    assert isinstance(ok, VerifiedUpdate) and ok.payload == encode(sent)
    [unsigned] = _feed(worker, "dev-0", encode(_update(nonce="n-2")), "n-2")
    assert isinstance(unsigned, RefusedUpload) and not unsigned.verified
    assert "not signed" in unsigned.reason
    wrong = _update(device="dev-1", nonce="n-3")
    [forged] = _feed(worker, "dev-1", seal(encode(wrong), identity), "n-3")
    assert isinstance(forged, RefusedUpload) and not forged.verified
    store.revoke("dev-0")  # read at once through the worker's own connection
    [revoked] = _feed(worker, "dev-0", seal(encode(_update(nonce="n-4")), identity), "n-4")
    assert isinstance(revoked, RefusedUpload) and "revoked" in revoked.reason
    keys.close()
    store.close()


def test_the_writer_stores_and_acks_a_workers_result_as_its_own_chunks(tmp_path):
    h = Harness(tmp_path)
    task = h.connect(["dev-0", "dev-1"])
    worker = _worker(tmp_path)
    acks = []
    for device in task.expected():
        sent = update(device, task, 0.2)
        [result] = _feed(worker, device, encode(sent), sent.nonce)
        acks += [a.ack for a in h.send(result) if isinstance(a, SendAck)]
    assert [a.status for a in acks] == ["accepted", "accepted"]
    first = update(task.expected()[0], task, nonce="again")
    [again] = _feed(worker, first.device_id, encode(first), "again")
    assert [a.ack.status for a in h.send(again) if isinstance(a, SendAck)] == ["duplicate"]
    h.tick(1.0)
    assert h.core.state.version == 1
    assert np.allclose(h.core.state.weights["w"], 0.2)
    refused = RefusedUpload(TOPICS.update("dev-1"), "dev-1", "n-9", "bad blob", True,
                            h.clock.at())
    [answer] = [a.ack for a in h.send(refused) if isinstance(a, SendAck)]
    assert (answer.status, answer.reason, answer.nonce) == ("rejected", "bad blob", "n-9")
    assert ("dev-1", "n-9", "bad blob") in h.store.rejections()


@pytest.mark.parametrize("workers", [0, -1, 10_000, "2", True])
def test_a_bad_worker_count_is_one_line_naming_the_key(workers):
    with pytest.raises(ConfigError) as err:
        load_aggregator_config({"ingest": {"workers": workers}})
    text = str(err.value)
    assert "workers" in text and "\n" not in text
    if isinstance(workers, int) and not isinstance(workers, bool):
        assert f"ingest.workers must be a whole number from 1 to {max_workers()}" in text


def test_one_worker_is_the_default():
    assert load_aggregator_config({}).ingest.workers == 1


def test_a_worker_that_dies_is_started_again_with_a_warning(tmp_path, caplog):
    config = AggregatorConfig(federation=FED, db_path=tmp_path / "agg.sqlite3",
                              host="127.0.0.1", port=1)  # nothing listens: they retry
    config.ingest.workers = 2
    workers = IngestWorkers(config, WEIGHTS, lambda result: None)
    workers.start(wait_s=0.0)
    try:
        first = workers._procs[0]
        assert first is not None and first.pid is not None
        pid = first.pid
        os.kill(pid, signal.SIGKILL)
        first.join(10)
        workers._started[0] = 0.0
        with caplog.at_level(logging.WARNING, logger="aggregator.service"):
            workers.check()
        assert workers.restarts == 1
        assert "ingest worker 0 stopped (exit code -9); starting it again" in caplog.text
        again = workers._procs[0]
        assert again is not None and again.is_alive() and again.pid != pid
    finally:
        workers.stop()
    assert all(p is None or not p.is_alive() for p in workers._procs)

