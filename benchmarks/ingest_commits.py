"""Commits per second and updates stored per second, for a burst from many devices.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ingest_commits.py [--devices 1000]
        [--workers 1 2]

Starts mosquitto and the aggregator (in this process, its own thread; async mode with a
buffer that never fills, so no version is made and only ingest is measured; the demo's
100k-parameter model size, updates top-k 1% q4 zlib, as the demo's devices send them).
One client then plays `--devices` devices as a fleet does after a model install: each
publishes its status, then its update, then its status again. Timed from the first
message to the last ack. SQLite commits are counted on the store's connection (every
COMMIT, and every write made outside a transaction: SQLite commits those on its own).

`--signed` turns on `[security]`: every device is enrolled and signs its statuses and
its update (Ed25519), which the aggregator verifies.

`--workers 1 2` runs the same burst once per `[ingest] workers` value (parallel ingest:
the worker processes verify and decode, the service stores and acks) and adds the ratio
of the last run's updates stored/s to the first's.

`--db-url postgresql://...` keeps the store in that PostgreSQL database instead of an
SQLite file (each run in a schema of its own, dropped after). Commits are then the
service's durable group commits (`Store.commits`): PostgreSQL's are not traced.

Self-contained on purpose (no tests/ imports, no new APIs), so the same file measures an
older checkout: `PYTHONPATH=/path/to/old/checkout python benchmarks/ingest_commits.py`.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import queue
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from aggregator.config import AggregatorConfig, AsyncConfig
from aggregator.service import Aggregator
from edge_client.shared.codecs import CodecConfig, encode_vector
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import Ack, Status, Task, Topics, Update, decode, encode
from edge_client.shared.protocol.chunking import split
from edge_client.shared.protocol.seeds import update_seed
from edge_client.shared.protocol.signing import is_signed, open_envelope, seal
from edge_client.shared.security import AggregatorSecurity
from edge_client.training import mlp_trainer
from fedge.broker import MosquittoBroker

FEDERATION = "bench"
SIZES = [64, 1333, 10]  # the demo's model: about 100k parameters
UPLINK = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4", error_feedback=False,
                     compress="zlib")


class CommitCounter:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.count = db, 0
        db.set_trace_callback(self._saw)

    def made(self, store) -> int:
        return self.count

    def _saw(self, sql: str) -> None:
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if verb == "COMMIT" or (verb in ("INSERT", "UPDATE", "DELETE")
                                and not self.db.in_transaction):
            self.count += 1


class GroupCommitCounter:
    """PostgreSQL: the service's durable group commits (no statement trace there)."""

    def __init__(self, store) -> None:
        self.count = store.commits

    def made(self, store) -> int:
        return store.commits - self.count


def _counter(store):
    db = getattr(store.db, "raw", store.db)  # the SQLite connection, older checkouts too
    return CommitCounter(db) if isinstance(db, sqlite3.Connection) else GroupCommitCounter(store)


def _schema_url(url: str) -> tuple[str, str]:
    """A new schema in the database at `url`, and the URL whose sessions use it."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    glue = "&" if "?" in url else "?"
    return schema, f"{url}{glue}options=-csearch_path%3D{schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")



def _client(broker: MosquittoBroker) -> tuple[mqtt.Client, queue.Queue]:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id="bench-fleet", protocol=mqtt.MQTTv311)
    inbox: queue.Queue = queue.Queue()
    client.on_message = lambda _c, _u, m: inbox.put((m.topic, m.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client, inbox


def _body(payload: bytes) -> bytes:
    """What the aggregator sent, without its signature (with --signed)."""
    return open_envelope(payload).body if is_signed(payload) else payload


def _update(device: str, task: Task, weights: dict[str, np.ndarray],
            rng: np.random.Generator) -> tuple[str, bytes]:
    flat = rng.normal(0, 0.01, sum(w.size for w in weights.values())).astype(np.float32)
    blob = encode_vector(flat, UPLINK, update_seed(task.task_id, device), rng).blob
    nonce = uuid.uuid4().hex
    update = Update(device_id=device, task_id=task.task_id, nonce=nonce,
                    base_version=task.model_version, num_samples=10, tensors={}, blob=blob,
                    codec=UPLINK.to_wire(), metrics={}, created_at=time.time())
    return nonce, encode(update)


def run(devices: int, workdir: Path, workers: int = 1, signed: bool = False,
        db_url: str = "") -> dict:
    schema = ""
    if db_url:
        schema, db_url = _schema_url(db_url)
    try:
        return _run(devices, workdir, workers, signed, db_url)
    finally:
        if schema:
            _drop_schema(db_url, schema)


def _run(devices: int, workdir: Path, workers: int, signed: bool, db_url: str) -> dict:
    broker = MosquittoBroker.start(workdir=workdir / "broker")
    topics = Topics(FEDERATION)
    weights = mlp_trainer(SIZES, seed=0).get_weights()
    config = AggregatorConfig(federation=FEDERATION, port=broker.port, mode="async",
                              async_=AsyncConfig(buffer_size=10 * devices), rounds=0,
                              db_path=workdir / "agg.sqlite3", presence_settle_s=0.2,
                              uplink=UPLINK, **({"db_url": db_url} if db_url else {}))
    config.presence.max_newcomers = max(config.presence.max_newcomers, devices)
    if workers > 1:  # only then: an older checkout has no [ingest] workers
        config.ingest.workers = workers
    if signed:
        config.security = AggregatorSecurity(enabled=True, key_file=workdir / "agg.key")
    agg = Aggregator(config, initial_weights=weights)
    keys = {f"d{i:05d}": Identity.generate() for i in range(devices)} if signed else {}
    for device, identity in keys.items():
        agg.store.enroll(device, identity.public_text)

    def sealed(device: str, message: bytes) -> bytes:
        return seal(message, keys[device]) if signed else message
    commits = _counter(agg.store)
    stop = threading.Event()
    loop = threading.Thread(target=agg.run, args=(stop, False), daemon=True)
    client, inbox = _client(broker)
    try:
        loop.start()
        client.subscribe(topics.task, qos=1)
        client.subscribe(topics.ack("+"), qos=1)
        fleet = [f"d{i:05d}" for i in range(devices)]

        def status(device: str, later_s: float = 0.0) -> bytes:
            return sealed(device, encode(Status(device_id=device, online=True, eligible=True,
                                                model_version=0,
                                                time=time.time() + later_s)))

        client.publish(topics.status(fleet[0]), status(fleet[0]), qos=1, retain=True)
        task = None
        while task is None:
            topic, payload = inbox.get(timeout=30)
            if topic == topics.task and payload:
                task = decode(_body(payload), expect=Task)
        rng = np.random.default_rng(0)
        updates = [(d, nonce, sealed(d, message)) for d in fleet
                   for nonce, message in [_update(d, task, weights, rng)]]
        size = sum(len(m) for _, _, m in updates) / devices
        commits = _counter(agg.store)
        started = time.perf_counter()
        for device, nonce, message in updates:
            client.publish(topics.status(device), status(device), qos=1, retain=True)
            for chunk in split(message, nonce):
                client.publish(topics.update(device), chunk, qos=1)
            client.publish(topics.status(device), status(device, 0.001),
                           qos=1, retain=True)
        acked = 0
        while acked < devices:
            topic, payload = inbox.get(timeout=120)
            if topic.startswith(topics.prefix + "/ack/"):
                acked += decode(_body(payload), expect=Ack).status == "accepted"
        took = time.perf_counter() - started
        made = commits.made(agg.store)
    finally:
        stop.set()
        loop.join(30)
        client.loop_stop()
        client.disconnect()
        broker.stop()
    return {"devices": devices, "ingest_workers": workers, "signed": signed,
            "store": "postgresql" if db_url else "sqlite",
            "update_bytes": round(size),
            "messages": 3 * devices,
            "seconds": round(took, 3), "updates_stored_per_s": round(devices / took, 1),
            "commits": made, "commits_per_s": round(made / took, 1),
            "commits_per_update": round(made / devices, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--signed", action="store_true",
                        help="[security] on: enrolled devices sign, the aggregator verifies")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="[ingest] workers for each run (e.g. 1 2)")
    parser.add_argument("--db-url", default="",
                        help="the store in this PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    runs = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="fedge-ingest-", dir=Path.cwd()) as work:
            runs.append(run(args.devices, Path(work), workers, args.signed, args.db_url))
    if len(runs) == 1:
        print(json.dumps(runs[0]))
        return
    ratio = runs[-1]["updates_stored_per_s"] / runs[0]["updates_stored_per_s"]
    print(json.dumps({"runs": runs, "ratio_last_to_first": round(ratio, 2)}))


if __name__ == "__main__":
    main()
