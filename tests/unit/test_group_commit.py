"""Group commit (aggregator/ingest_batch.py, Store.group) and presence as soft state.

A batch of updates, rejections and statuses is one SQLite transaction: counted here as
SQLite sees them (every COMMIT, and every write made outside a transaction, which SQLite
commits on its own), and as fsyncs of the WAL. The seal follows the commit, never leads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

import pytest

from aggregator.config import AggregatorConfig, SyncConfig, load_aggregator_config
from aggregator.core import SendAck, StatusMessage, UpdateChunk
from aggregator.ingest_batch import BatchBounds, IngestConfig
from aggregator.presence import PresenceConfig
from aggregator.service import Aggregator, now
from aggregator.store_db import StoreUnreachable
from aggregator.store_group import GroupLost
from aggregator.store_seal import read_seal, seal_path
from edge_client.shared.protocol import Status, encode
from edge_client.shared.protocol.chunking import split
from edge_client.shared.settings import ConfigError
from edge_client.shared.transport import Inbound
from tests.unit.test_aggregator_core import TOPICS, WEIGHTS, Harness, store_config, update
from tests.unit.test_handler_fuzz import FakeLink

DEVICES = [f"dev-{i}" for i in range(8)]
SLOW_MACHINE = IngestConfig(batch_ms=1000)  # the batch ends by count here, not by time


class Commits:
    """Counts SQLite commits on a connection: explicit COMMITs and autocommitted writes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.count = db, 0
        db.set_trace_callback(self._saw)

    def _saw(self, sql: str) -> None:
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if verb == "COMMIT" or (verb in ("INSERT", "UPDATE", "DELETE")
                                and not self.db.in_transaction):
            self.count += 1


def _harness(tmp_path, **config) -> Harness:
    config.setdefault("sync", SyncConfig(target_updates=len(DEVICES), min_fraction=1.0,
                                         round_timeout_s=60))
    return Harness(tmp_path, **config)


def _chunks(h: Harness, u) -> list[UpdateChunk]:
    return [UpdateChunk(TOPICS.update(u.device_id), c, False, h.clock.at())
            for c in split(encode(u), u.nonce, 1024)]


def _status(h: Harness, device: str, online: bool = True) -> StatusMessage:
    status = Status(device_id=device, online=online, model_version=0, time=h.clock.wall)
    return StatusMessage(TOPICS.status(device), encode(status), False, h.clock.at())


# ---------------------------------------------------------------- one transaction
def test_a_batch_of_updates_statuses_and_rejections_is_one_commit(tmp_path, monkeypatch):
    h = _harness(tmp_path)
    task = h.connect(DEVICES)
    h.store.keep_sealed()
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    commits = Commits(h.store.db.raw)
    sealed_before = read_seal(seal_path(h.store.path))
    events = [e for d in DEVICES for e in _chunks(h, update(d, task))]
    events += [_status(h, d, online=False) for d in DEVICES[:3]]
    events.append(UpdateChunk(TOPICS.update("dev-0"), b"junk", False, h.clock.at()))
    events += _chunks(h, update("dev-1", task, nonce="again"))  # a second one: duplicate
    actions = []
    with h.core.batch():
        for event in events:
            actions += h.core.handle(event)
        assert read_seal(seal_path(h.store.path)) == sealed_before  # not before COMMIT
    acks = [a.ack.status for a in actions if isinstance(a, SendAck)]
    assert acks.count("accepted") == len(DEVICES) and "rejected" in acks
    assert acks.count("duplicate") == 1
    assert commits.count == 1 and len(fsyncs) == 1  # one commit, one fsync of the WAL
    assert h.store.count_updates() == len(DEVICES) and h.store.count_rejections() == 1
    offline = {d["device_id"] for d in h.store.devices() if not d["online"]}
    assert offline == set(DEVICES[:3])  # statuses rode along with the updates
    assert read_seal(seal_path(h.store.path)).updates == len(DEVICES)  # sealed after


def test_a_batch_that_stores_no_update_commits_without_an_fsync(tmp_path, monkeypatch):
    h = _harness(tmp_path)
    h.connect(DEVICES)
    fsyncs = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    commits = Commits(h.store.db.raw)
    with h.core.batch():
        for device in DEVICES:
            h.core.handle(UpdateChunk(TOPICS.update(device), b"junk", False, h.clock.at()))
            h.core.handle(_status(h, device))
    assert h.store.count_rejections() == len(DEVICES)
    assert commits.count == 1 and fsyncs == []  # rejections acknowledge nothing
    assert h.store.devices() == [] or all(d["online"] for d in h.store.devices())


def test_a_failed_commit_raises_group_lost_and_seals_nothing(make_store):
    store = make_store()
    store.keep_sealed()  # SQLite only: PostgreSQL has no seal file
    with pytest.raises(GroupLost), store.group():
        store.count("x")
        store.db.execute("ROLLBACK")  # what SQLite does by itself on disk full
    assert store.counter("x") == 0
    if store.engine == "sqlite":
        assert read_seal(seal_path(store.path)).updates == 0
    with store.group():  # the store is usable again
        store.count("x")
    assert store.counter("x") == 1 and store.commits == 1
    store.close()


def test_a_failed_part_rolls_back_only_itself(make_store):
    store = make_store()
    with store.group():
        store.count("kept")
        with pytest.raises(ZeroDivisionError), store._transaction():
            store.count("gone")
            raise ZeroDivisionError
    assert store.counter("kept") == 1 and store.counter("gone") == 0
    store.close()


# ---------------------------------------------------------------- batch bounds
def test_a_batch_ends_at_its_message_bound_or_its_time_bound():
    now = [0.0]
    bounds = BatchBounds(IngestConfig(batch_messages=3, batch_ms=5.0), clock=lambda: now[0])
    bounds.start()
    for _ in range(2):
        bounds.took()
        assert not bounds.full()
    bounds.took()
    assert bounds.full()  # three messages
    bounds.start()
    bounds.took()
    now[0] += 0.004
    assert not bounds.full()
    now[0] += 0.001
    assert bounds.full()  # 5 ms after the first


@pytest.mark.parametrize("table, message", [
    ({"batch_messages": 0}, "ingest.batch_messages must be between 1 and 100000, not 0"),
    ({"batch_ms": 0}, "ingest.batch_ms must be > 0 and <= 1000, not 0.0"),
    ({"batch_ms": 5000}, "ingest.batch_ms must be > 0 and <= 1000, not 5000.0"),
])
def test_bad_batch_bounds_get_one_line_naming_the_key(table, message):
    with pytest.raises(ConfigError) as err:
        load_aggregator_config({"ingest": table})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_service_loop_batches_what_has_arrived_then_acks_after_the_commit(store_url):
    config = AggregatorConfig(federation="core", **store_config(store_url),
                              sync=SyncConfig(target_updates=len(DEVICES), min_fraction=1.0),
                              ingest=SLOW_MACHINE)
    agg = Aggregator(config, initial_weights=WEIGHTS)
    agg.link = FakeLink()
    agg.available = set(DEVICES)
    agg.core.open_task(now())
    task = agg.core.state.task
    real_group = agg.store.group
    published_at_commit = []

    @contextlib.contextmanager
    def group():  # how many acks were out when the batch's COMMIT ran
        with real_group():
            yield
            published_at_commit.append(len(agg.link.published))

    agg.store.group = group
    inbound = [Inbound(TOPICS.update(d), c, False)
               for d in DEVICES for c in split(encode(update(d, task)), f"{d}-{task.task_id}",
                                               1024)]
    for event in inbound[1:]:
        agg.events.put(event)
    agg._serve_batch(inbound[0])
    assert agg.store.commits == 1 and agg.store.count_updates() == len(DEVICES)
    acks = [p for p in agg.link.published if "/ack/" in p[0]]
    assert len(acks) == len(DEVICES) and published_at_commit == [0]  # acks after it
    agg.store.close()


# ---------------------------------------------------------------- presence
def test_statuses_wait_in_memory_and_are_written_after_write_every_s(tmp_path):
    h = Harness(tmp_path, presence=PresenceConfig(write_every_s=2.0))
    h.connect(DEVICES[:2])
    h.tick(5.0)
    assert {d["device_id"] for d in h.store.devices()} == set(DEVICES[:2])
    commits = Commits(h.store.db.raw)
    h.send(_status(h, "dev-0", online=False))
    h.tick(1.0)
    assert commits.count == 0 and all(d["online"] for d in h.store.devices())
    assert h.core.presence.candidates() == ["dev-1"]  # decisions read memory at once
    h.tick(1.0)
    assert commits.count == 1  # the timer: one write for all that waited
    assert {d["device_id"]: d["online"] for d in h.store.devices()} == {"dev-0": 0, "dev-1": 1}


def test_write_every_s_is_checked():
    with pytest.raises(ConfigError, match=r"presence\.write_every_s must be > 0"):
        load_aggregator_config({"presence": {"write_every_s": 0}})


def test_a_batch_ends_when_the_round_has_its_updates(store_url):
    """As if a tick followed every message: the update after the target is late."""
    config = AggregatorConfig(federation="core", **store_config(store_url),
                              sync=SyncConfig(target_updates=3, min_fraction=1.0,
                                              over_selection=1.0), ingest=SLOW_MACHINE)
    agg = Aggregator(config, initial_weights=WEIGHTS)
    agg.link = FakeLink()
    agg.available = set(DEVICES)
    agg.core.open_task(now())
    task = agg.core.state.task
    invited = task.expected()
    assert invited is not None
    chunks = [Inbound(TOPICS.update(d), c, False) for d in invited
              for c in split(encode(update(d, task)), f"{d}-{task.task_id}", 1024)]
    for event in chunks[1:]:
        agg.events.put(event)
    agg._serve_batch(chunks[0])
    assert len(invited) == 6 and len(chunks) == 6  # one chunk each
    assert agg.store.count_updates() == 3 and agg.events.qsize() == 3  # the rest wait
    agg.store.close()


def test_a_lost_batch_sends_none_of_its_acks_and_stops_the_service(store_url, caplog):
    config = AggregatorConfig(federation="core", **store_config(store_url),
                              sync=SyncConfig(target_updates=len(DEVICES), min_fraction=1.0),
                              ingest=SLOW_MACHINE)
    agg = Aggregator(config, initial_weights=WEIGHTS)
    agg.link = FakeLink()
    agg.available = set(DEVICES)
    agg.core.open_task(now())
    task = agg.core.state.task
    real_handle = agg.core.handle

    def handle_then_disk_full(event):  # SQLite gives up the transaction by itself
        out = real_handle(event)
        agg.store.db.execute("ROLLBACK")
        return out

    agg.core.handle = handle_then_disk_full
    [chunk] = split(encode(update(DEVICES[0], task)), f"{DEVICES[0]}-{task.task_id}", 1024)
    with pytest.raises(GroupLost):
        agg._serve_batch(Inbound(TOPICS.update(DEVICES[0]), chunk, False))
    assert not [p for p in agg.link.published if "/ack/" in p[0]]
    assert agg.store.count_updates() == 0
    assert "stopping without acknowledging that batch's 1 message(s)" in caplog.text
    agg.store.close()


def test_a_lost_postgresql_server_stops_the_service_without_the_batchs_acks(postgres_url):
    """The session killed while a batch is handled: StoreUnreachable (an OSError: `serve`
    prints it as one line) leaves the loop, and none of the batch's acks go out."""
    import psycopg

    config = AggregatorConfig(federation="core", db_url=postgres_url,
                              sync=SyncConfig(target_updates=len(DEVICES), min_fraction=1.0),
                              ingest=SLOW_MACHINE)
    agg = Aggregator(config, initial_weights=WEIGHTS)
    agg.link = FakeLink()
    agg.available = set(DEVICES)
    agg.core.open_task(now())
    task = agg.core.state.task
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (agg.store.db.raw.info.backend_pid,))
    [chunk] = split(encode(update(DEVICES[0], task)), f"{DEVICES[0]}-{task.task_id}", 1024)
    with pytest.raises(StoreUnreachable, match=r"^db_url \S+: lost the PostgreSQL server"):
        agg._serve_batch(Inbound(TOPICS.update(DEVICES[0]), chunk, False))
    assert isinstance(StoreUnreachable("x"), OSError)
    assert not [p for p in agg.link.published if "/ack/" in p[0]]
    agg.store.close()
