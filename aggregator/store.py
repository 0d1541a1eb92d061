"""The aggregator's durable state in SQLite: models, tasks, updates, devices.

WAL mode with synchronous=FULL: once a commit returns, the update survives a crash or
power cut, and only then is the device's ack sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aggregator.states import UpdateState
from aggregator.store_check import SEALED_NOTE
from aggregator.store_seal import (
    Seal,
    SealWriter,
    read_seal,
    seal_in_use,
    seal_path,
    write_new_seal,
)
from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Status, Task, Update, decode

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS notes (
    key TEXT PRIMARY KEY,         -- small service state for the dashboard and restarts
    value TEXT NOT NULL           -- JSON
);
"""


@dataclass(frozen=True)
class StoredModel:
    version: int
    blob: bytes
    info: dict[str, Any]
    sha256: str = ""  # as stored when the version was made


class Store:
    """Owned by one thread at a time: built by the caller, then used by the service loop."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._seal: SealWriter | None = None
        self._sealed = Seal(0, -1, "")

    def close(self) -> None:
        if self._seal is not None:
            self._seal.close()
            self._seal = None
        self.db.close()

    # ------------------------------------------------------------ seal
    def keep_sealed(self) -> None:
        """Seal the store as it is now, then after every commit that acks an update or
        makes a version (aggregator/store_seal.py). Only the service calls this, after
        aggregator/store_check.py found the store whole."""
        row = self.db.execute(
            "SELECT version, sha256 FROM models ORDER BY version DESC LIMIT 1").fetchone()
        path = seal_path(self.path)
        if seal_in_use(path):
            log.warning("aggregator: another process holds %s: is a second aggregator "
                        "serving this store?", path)
        try:
            old = read_seal(path)
        except ValueError:
            old = None
        version, sha256 = row or (-1, "")
        self._sealed = Seal(self.count_updates(), version, sha256,
                            seq=(old.seq if old else 0) + 1)
        write_new_seal(path, self._sealed)
        self.set_note(SEALED_NOTE, True)
        self._seal = SealWriter(path, self._sealed)

    def _reseal(self, updates: int = 0, version: int | None = None, sha256: str = "") -> None:
        if self._seal is None:
            return
        s = self._sealed
        self._sealed = Seal(s.updates + updates, s.version if version is None else version,
                            sha256 or s.sha256)
        self._seal.write(self._sealed.updates, self._sealed.version, self._sealed.sha256)

    # ------------------------------------------------------------ models
    def add_model(self, version: int, blob: bytes, sha256: str, info: dict[str, Any],
                  used: list[Update] | None = None, close_task: str | None = None,
                  delta: bytes | None = None, residual: bytes | None = None) -> None:
        """Store a new version, mark its updates used and close its task, atomically;
        `residual` is the downlink encoder's state after it, in the same commit."""
        with self._transaction():
            self.db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?)",
                            (version, time.time(), sha256, blob, json.dumps(info), delta))
            if residual is not None:
                self.db.execute("INSERT INTO downlink_state VALUES (?, ?)", (version, residual))
            for u in used or []:
                self.db.execute(
                    "UPDATE updates SET state='aggregated', used_in=? "
                    "WHERE device_id=? AND task_id=? AND nonce=?",
                    (version, u.device_id, u.task_id, u.nonce))
            if close_task is not None:
                self.db.execute("UPDATE tasks SET state='closed' WHERE task_id=?",
                                (close_task,))
        self._reseal(version=version, sha256=sha256)

    def latest_model(self) -> StoredModel | None:
        row = self.db.execute("SELECT version, blob, info, sha256 FROM models "
                              "ORDER BY version DESC LIMIT 1").fetchone()
        return None if row is None else StoredModel(row[0], row[1], json.loads(row[2]),
                                                    row[3])

    def downlink_residual(self, version: int) -> bytes | None:
        """The downlink encoder's error feedback as it was right after `version`."""
        row = self.db.execute("SELECT residual FROM downlink_state WHERE version=?",
                              (version,)).fetchone()
        return None if row is None else row[0]

    def model_delta(self, version: int) -> bytes | None:
        row = self.db.execute("SELECT delta FROM models WHERE version=?",
                              (version,)).fetchone()
        return None if row is None else row[0]

    def model_sha256(self, version: int) -> str | None:
        row = self.db.execute("SELECT sha256 FROM models WHERE version=?",
                              (version,)).fetchone()
        return None if row is None else row[0]

    def model_size(self, version: int) -> int | None:
        row = self.db.execute("SELECT length(blob) FROM models WHERE version=?",
                              (version,)).fetchone()
        return None if row is None else row[0]

    def model_history(self) -> list[VersionRecord]:
        rows = self.db.execute("SELECT version, created_at, info FROM models ORDER BY version")
        return [VersionRecord.from_info(v, t, json.loads(i)) for v, t, i in rows]

    # ------------------------------------------------------------ tasks
    def add_task(self, task: Task, message: bytes) -> None:
        with self._transaction():
            self.db.execute("UPDATE tasks SET state='closed' WHERE state='open'")
            self.db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, 'open', ?)",
                            (task.task_id, task.round, task.mode, task.model_version,
                             time.time(), message))

    def task_state(self, task_id: str
                   ) -> tuple[str, int, str, tuple[str, ...] | None] | None:
        """(mode, model_version, state, invited) of a task, or None if it was never issued;
        invited is None when the task invited every device."""
        row = self.db.execute("SELECT mode, model_version, state, message FROM tasks "
                              "WHERE task_id=?", (task_id,)).fetchone()
        if row is None:
            return None
        task = decode(row[3], expect=Task)
        return row[0], row[1], row[2], task.invited

    def open_task(self) -> tuple[Task, float] | None:
        row = self.db.execute("SELECT message, opened_at FROM tasks WHERE state='open' "
                              "ORDER BY opened_at DESC LIMIT 1").fetchone()
        if row is None:
            return None
        task = decode(row[0], expect=Task)
        return task, row[1]

    def abort_task(self, task_id: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE tasks SET state='aborted' WHERE task_id=?", (task_id,))
            self.db.execute("UPDATE updates SET state='discarded' "
                            "WHERE task_id=? AND state='pending'", (task_id,))

    # ------------------------------------------------------------ updates
    def add_update(self, update: Update, payload: bytes, state: UpdateState | str) -> bool:
        """Store an update durably; False when this device already sent one for the task."""
        state = UpdateState(state)
        with self._transaction():
            seen = self.db.execute("SELECT 1 FROM updates WHERE device_id=? AND task_id=?",
                                   (update.device_id, update.task_id)).fetchone()
            if seen:
                return False
            self.db.execute(
                "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (update.device_id, update.task_id, update.nonce, update.base_version,
                 update.num_samples, time.time(), state.value, json.dumps(update.metrics), payload,
                 hashlib.sha256(payload).hexdigest()))
        self._reseal(updates=1)
        return True

    def has_update(self, device_id: str, task_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM updates WHERE device_id=? AND task_id=?",
                               (device_id, task_id)).fetchone() is not None

    def pending_payloads(self) -> list[bytes]:
        rows = self.db.execute("SELECT payload FROM updates WHERE state='pending' "
                               "ORDER BY received_at")
        return [r[0] for r in rows]

    def count_updates(self, state: UpdateState | str | None = None) -> int:
        if state is None:
            return self.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM updates WHERE state=?",
                               (UpdateState(state).value,)).fetchone()[0]

    def update_keys(self) -> list[tuple[str, str, str, str]]:
        """(device, task, nonce, state) of every stored update, for audits and tests."""
        return list(self.db.execute(
            "SELECT device_id, task_id, nonce, state FROM updates ORDER BY received_at"))

    def audit(self, version: int | None = None) -> list[dict[str, Any]]:
        """Who contributed to which model version: ids, counts and digests, never data."""
        cols = ("used_in", "device_id", "task_id", "nonce", "num_samples", "digest",
                "received_at")
        query = f"SELECT {', '.join(cols)} FROM updates WHERE state='aggregated'"
        args: tuple = ()
        if version is not None:
            query += " AND used_in=?"
            args = (version,)
        rows = self.db.execute(query + " ORDER BY used_in, device_id", args)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # ------------------------------------------------------------ enrolment
    def enroll(self, device_id: str, public_key: str) -> None:
        """Allow a device's key; enrolling again replaces the key and lifts a revocation."""
        self.db.execute(
            "INSERT INTO enrolment VALUES (?, ?, ?, NULL) ON CONFLICT(device_id) DO UPDATE "
            "SET public_key=excluded.public_key, enrolled_at=excluded.enrolled_at, "
            "revoked_at=NULL", (device_id, public_key, time.time()))

    def revoke(self, device_id: str) -> bool:
        """Refuse a device from now on; False when it was never enrolled."""
        cur = self.db.execute("UPDATE enrolment SET revoked_at=? WHERE device_id=?",
                              (time.time(), device_id))
        return cur.rowcount == 1

    def device_key(self, device_id: str) -> str | None:
        """The enrolled, unrevoked public key of a device, or None."""
        row = self.db.execute("SELECT public_key FROM enrolment WHERE device_id=? AND "
                              "revoked_at IS NULL", (device_id,)).fetchone()
        return None if row is None else row[0]

    def enrolment(self) -> list[dict[str, Any]]:
        cols = ("device_id", "public_key", "enrolled_at", "revoked_at")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM enrolment ORDER BY device_id")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def count(self, name: str, by: int = 1) -> None:
        self.db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                        "SET value=value+excluded.value", (name, by))

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return 0 if row is None else row[0]

    # ------------------------------------------------------------ devices
    def set_device(self, status: Status) -> None:
        self.db.execute(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE "
            "SET online=excluded.online, eligible=excluded.eligible, reason=excluded.reason, "
            "model_version=excluded.model_version, last_seen=excluded.last_seen, "
            "battery_pct=excluded.battery_pct",
            (status.device_id, int(status.online), int(status.eligible), status.reason,
             status.model_version, time.time(), status.battery_pct))

    def forget_device(self, device_id: str) -> None:
        self.db.execute("DELETE FROM devices WHERE device_id=?", (device_id,))

    def forget_unproven_devices(self) -> int:
        """Drop the rows of devices that never had an update stored; how many."""
        return self.db.execute("DELETE FROM devices WHERE device_id NOT IN "
                               "(SELECT device_id FROM updates)").rowcount

    def proven_devices(self) -> list[str]:
        """Devices with at least one stored update (any state): a track record."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT device_id FROM updates")]

    def devices(self) -> list[dict[str, Any]]:
        cols = ("device_id", "online", "eligible", "reason", "model_version", "last_seen",
                "battery_pct")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM devices ORDER BY device_id")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # How many rejections to keep, per device and in all (`keep_rejections`); class-level
    # defaults so that a Store built anywhere prunes.
    _keep_per_device = 100
    _keep_total = 100_000
    _added_since_trim = 0

    def keep_rejections(self, per_device: int, total: int) -> None:
        """Keep only each device's newest `per_device` rejections and about `total` in all:
        a flood of junk must not grow the store or the cost of the next rejection."""
        self._keep_per_device, self._keep_total = per_device, total

    def add_rejection(self, device_id: str, nonce: str, reason: str) -> None:
        """Record one rejection and prune, at a cost independent of the history: the
        per-device prune walks `per_device` index entries; the global one runs every
        `total / 10` rejections (amortized: about 10 rows per rejection). A rejection is
        a log line, not an acknowledged update: its commit skips the fsync (the next
        synchronous commit makes it durable), so a flood of junk costs no disk flushes."""
        prior = self.db.execute("PRAGMA synchronous").fetchone()[0]
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._add_rejection(device_id, nonce, reason)
        finally:
            self.db.execute(f"PRAGMA synchronous={int(prior)}")

    def _add_rejection(self, device_id: str, nonce: str, reason: str) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO rejections VALUES (?, ?, ?, ?)",
                            (time.time(), device_id, nonce, reason))
            self.db.execute(
                "DELETE FROM rejections WHERE rowid IN (SELECT rowid FROM rejections "
                "WHERE device_id=? ORDER BY at DESC LIMIT -1 OFFSET ?)",
                (device_id, self._keep_per_device))
            self._added_since_trim += 1
            if self._added_since_trim >= max(1, self._keep_total // 10):
                self._added_since_trim = 0
                self.db.execute(
                    "DELETE FROM rejections WHERE rowid IN (SELECT rowid FROM rejections "
                    "ORDER BY rowid DESC LIMIT -1 OFFSET ?)", (self._keep_total,))

    def count_rejections(self, device_id: str | None = None) -> int:
        if device_id is None:
            return self.db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM rejections WHERE device_id=?",
                               (device_id,)).fetchone()[0]

    def rejections(self) -> list[tuple[str, str, str]]:
        return list(self.db.execute("SELECT device_id, nonce, reason FROM rejections"))

    # ------------------------------------------------------------ anomaly flags
    def add_clipping(self, version: int, norms: dict[str, float], bound: float,
                     median: float) -> None:
        """Record the devices whose updates to `version` were clipped, with their norms,
        the bound and the median norm of the version's updates."""
        self.db.executemany("INSERT INTO clipping VALUES (?, ?, ?, ?, ?)",
                            [(version, d, n, bound, median) for d, n in sorted(norms.items())])

    def device_outcomes(self, window: int, clip_factor: float,
                        device_id: str | None = None) -> list[dict[str, Any]]:
        """Per device, its last `window` outcomes: stored updates and rejections, newest
        first. `rejected` and `clipped` count the bad ones among them (a clipped update
        counts when its norm was >= clip_factor times its version's median norm: an
        outlier among its peers); `clipped_total` counts every clipped update ever."""
        # For one device (after each rejection), each branch reads only its newest
        # `window` rows through an index: the cost does not grow with the history.
        one = device_id is not None
        where_u = "WHERE u.device_id = :device" if one else ""
        where_r = "WHERE device_id = :device" if one else ""
        newest_u = "ORDER BY u.received_at DESC LIMIT :window" if one else ""
        newest_r = "ORDER BY at DESC LIMIT :window" if one else ""
        rows = self.db.execute(f"""
            WITH events AS (
                SELECT * FROM (
                    SELECT u.device_id, u.received_at AS at,
                           EXISTS (SELECT 1 FROM clipping c WHERE c.version = u.used_in
                                   AND c.device_id = u.device_id
                                   AND c.norm >= :factor * c.median) AS clipped,
                           0 AS rejected, NULL AS reason
                    FROM updates u {where_u} {newest_u})
                UNION ALL
                SELECT * FROM (
                    SELECT device_id, at, 0, 1, reason FROM rejections {where_r} {newest_r})
            ), ranked AS (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY at DESC) AS n
                FROM events
            )
            SELECT device_id, COUNT(*), SUM(rejected), SUM(clipped),
                   (SELECT COUNT(*) FROM clipping c WHERE c.device_id = ranked.device_id),
                   (SELECT reason FROM rejections r WHERE r.device_id = ranked.device_id
                    ORDER BY at DESC LIMIT 1)
            FROM ranked WHERE n <= :window GROUP BY device_id ORDER BY device_id""",
            {"window": window, "factor": clip_factor, "device": device_id})
        cols = ("device_id", "recent", "rejected", "clipped", "clipped_total",
                "last_rejection")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # ------------------------------------------------------------ notes
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

    # ------------------------------------------------------------ plumbing
    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

