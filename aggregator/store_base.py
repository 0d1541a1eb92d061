"""The tables of the aggregator's store, and what its parts share: the connection and
one way to run a transaction (aggregator/store.py puts the parts together).

The SQL is SQLite's spelling; aggregator/store_db.py runs it on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aggregator.store_db import StoreDB

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    sha256 TEXT NOT NULL,
    blob BLOB NOT NULL,
    info TEXT NOT NULL,
    delta BLOB                    -- the downlink delta from the previous version, if any
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    mode TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    state TEXT NOT NULL,          -- open | closed | aborted
    message BLOB NOT NULL         -- the Task as published
);
CREATE TABLE IF NOT EXISTS task_members (
    task_id TEXT PRIMARY KEY,     -- a task that invites by cohort (its message names no one)
    members TEXT NOT NULL         -- JSON list: the candidates it invited, as planned
);
CREATE TABLE IF NOT EXISTS updates (
    device_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    num_samples INTEGER NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,          -- pending | aggregated | late | discarded
    used_in INTEGER,              -- the model version it went into
    metrics TEXT NOT NULL,
    payload BLOB NOT NULL,        -- the Update message (its signature checked and removed)
    digest TEXT NOT NULL,         -- sha256 of payload: the audit trail's fingerprint
    PRIMARY KEY (device_id, task_id, nonce)
);
CREATE TABLE IF NOT EXISTS enrolment (
    device_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,     -- "ed25519:<base64>"
    enrolled_at REAL NOT NULL,
    revoked_at REAL               -- set: refused from then on
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_state ON updates(state);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    eligible INTEGER NOT NULL,
    reason TEXT NOT NULL,
    model_version INTEGER,
    last_seen REAL NOT NULL,
    battery_pct REAL
);
CREATE TABLE IF NOT EXISTS drift_reports (
    device_id TEXT NOT NULL,
    at REAL NOT NULL,             -- when the status carrying it was seen
    report TEXT NOT NULL          -- JSON: DriftReport.to_json() (store_drift.py)
);
CREATE INDEX IF NOT EXISTS drift_reports_device ON drift_reports(device_id, at);
CREATE TABLE IF NOT EXISTS rejections (
    at REAL NOT NULL,
    device_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clipping (
    version INTEGER NOT NULL,     -- the model version the clipped update went into
    device_id TEXT NOT NULL,
    norm REAL NOT NULL,           -- the update's L2 norm before clipping
    bound REAL NOT NULL,          -- what it was clipped to
    median REAL NOT NULL          -- the median norm of that version's updates
);
CREATE INDEX IF NOT EXISTS clipping_device ON clipping(device_id, version);
CREATE INDEX IF NOT EXISTS rejections_device ON rejections(device_id, at);
CREATE TABLE IF NOT EXISTS downlink_state (
    version INTEGER PRIMARY KEY,  -- the downlink encoder's error feedback after this version
    residual BLOB NOT NULL        -- ErrorFeedback.to_bytes(): a restart continues it exactly
);
CREATE INDEX IF NOT EXISTS updates_device ON updates(device_id, received_at);
-- What the dashboard reads of every device's updates (its recent outcomes, its counts by
-- state), from the index alone: the table's rows carry the payloads.
CREATE INDEX IF NOT EXISTS updates_outcomes ON updates(device_id, received_at, used_in, state);
-- The updates of sites (aggregator/tier_view.py): none on a gateway of devices.
CREATE INDEX IF NOT EXISTS updates_sites ON updates(device_id, received_at)
    WHERE metrics LIKE '%"site_updates"%';
CREATE TABLE IF NOT EXISTS notes (
    key TEXT PRIMARY KEY,         -- small service state for the dashboard and restarts
    value TEXT NOT NULL           -- JSON
);
"""


class Tables:
    """Base of the store's parts: they all use one connection, owned by `Store`."""

    db: StoreDB
    _group: GroupState | None = None  # set while a group commit is open (Store.group)

    @property
    def engine(self) -> str:
        """Either "sqlite" or "postgresql": what is SQLite-only (the seal, check, recover) asks."""
        return self.db.engine

    def _transaction(self) -> Transaction:
        return Transaction(self.db)

    @contextlib.contextmanager
    def _soft_writes(self) -> Iterator[None]:
        """Writes that acknowledge nothing (rejections, device statuses): one transaction
        without the fsync (the next synchronous commit makes them durable), or, inside a
        group commit, part of it, counted so that a group of only these skips the fsync.
        Inside another open transaction: a savepoint of it, committed with it."""
        group = self._group
        if group is None and not self.db.in_transaction:
            with self.db.soft_transaction():
                yield
            return
        before = self.db.total_changes
        try:
            with self._transaction():
                yield
        finally:
            if group is not None:
                group.soft_changes += self.db.total_changes - before


@dataclass
class GroupState:
    """What an open group commit holds so far: the seal follows it after COMMIT."""

    changes_at_start: int
    soft_changes: int = 0  # rows written by _soft_writes: no fsync needed for them alone
    updates: int = 0  # updates stored (the seal's count grows by this after COMMIT)
    version: tuple[int, str] | None = None  # a model version made, with its SHA-256


class NoteTables(Tables):
    """Named counters and small JSON notes: service state for the dashboard and restarts."""

    def count(self, name: str, by: int = 1) -> None:
        self.db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                        "SET value=counters.value+excluded.value", (name, by))

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return 0 if row is None else row[0]

    def set_note(self, key: str, value: Any) -> None:
        """Keep a small JSON value under `key`; None removes it."""
        if value is None:
            self.db.execute("DELETE FROM notes WHERE key=?", (key,))
            return
        self.db.execute("INSERT INTO notes VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value=excluded.value", (key, json.dumps(value)))

    def note(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM notes WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])


class Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on any error. Inside a transaction already
    (a group commit) it is a savepoint: atomic on its own, committed with the group."""

    def __init__(self, db: StoreDB) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.db.in_transaction
        if self.nested:
            self.db.execute("SAVEPOINT part")
        else:
            self.db.begin()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.nested:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        elif not self.db.in_transaction:
            return  # the engine gave up the whole transaction (disk full): the group says so
        elif exc_type:
            self.db.execute("ROLLBACK TO part")
            self.db.execute("RELEASE part")
        else:
            self.db.execute("RELEASE part")
