"""The aggregator's durable state: models, tasks, updates, devices.

In SQLite (the embedded default: WAL mode, synchronous=FULL) or in PostgreSQL (`db_url`,
aggregator/store_postgres.py): once a commit returns, the update survives a crash or
power cut, and only then is the device's ack sent. The service commits a batch of
messages at once (store_group.py: one transaction, one flush). The tables are in
store_base.py; the device tables (store_devices.py) and the rejection log
(store_rejections.py) are parts of `Store` kept in their own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aggregator.lifecycle.store_stages import StageTables
from aggregator.states import TaskState, UpdateState
from aggregator.store_audit import AuditTables
from aggregator.store_base import SCHEMA, NoteTables
from aggregator.store_check import SEALED_NOTE
from aggregator.store_db import StoreLocation, connect, describe
from aggregator.store_devices import DeviceTables
from aggregator.store_group import GroupCommits
from aggregator.store_members import TaskMemberTables
from aggregator.store_rejections import RejectionTables
from aggregator.store_seal import (
    Seal,
    SealWriter,
    read_seal,
    seal_in_use,
    seal_path,
    write_new_seal,
)
from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Task, Update, decode

log = logging.getLogger(__name__)


class UpdateKey(Protocol):
    """What names a stored update: an `Update`, or the small record a round keeps."""

    @property
    def device_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def nonce(self) -> str: ...


@dataclass(frozen=True)
class StoredModel:
    version: int
    blob: bytes
    info: dict[str, Any]
    sha256: str = ""  # as stored when the version was made


class Store(GroupCommits, DeviceTables, RejectionTables, TaskMemberTables, StageTables,
            NoteTables, AuditTables):
    """Owned by one thread at a time: built by the caller, then used by the service loop."""

    def __init__(self, location: StoreLocation) -> None:
        """`location`: an SQLite file (Path), or a postgresql:// URL (str); ValueError
        (one line naming db_url) when PostgreSQL cannot be used."""
        self.name = describe(location)  # for messages: a URL shows no password
        self.path = Path(self.name)  # the SQLite file (the seal's neighbour)
        self.db = connect(location)
        self.db.executescript(SCHEMA)
        self.open_stage_tables()  # added to older stores: docs/lifecycle.md
        self._seal: SealWriter | None = None
        self._sealed = Seal(0, -1, "")
        self.commits = 0  # fsync'd group commits (Store.group): for tests and benchmarks

    def close(self) -> None:
        if self._seal is not None:
            self._seal.close()
            self._seal = None
        self.db.close()

    # ------------------------------------------------------------ seal
    def keep_sealed(self) -> None:
        """Seal the store as it is now, then after every commit that acks an update or
        makes a version (aggregator/store_seal.py). Only the service calls this, after
        aggregator/store_check.py found the store whole. PostgreSQL: no seal (its WAL
        is not lost silently), only the lock that says a service serves the database."""
        if self.engine != "sqlite":
            if not self.db.claim_writer():
                log.warning("aggregator: another session holds the writer lock of %s: is a "
                            "second aggregator serving this store?", self.name)
            return
        row = self.db.execute(
            "SELECT version, sha256 FROM models ORDER BY version DESC LIMIT 1").fetchone()
        path = seal_path(self.path)
        if seal_in_use(path):
            log.warning("aggregator: another process holds %s: is a second aggregator "
                        "serving this store?", path)
        old = _readable_seal(path)
        version, sha256 = row or (-1, "")
        self._sealed = Seal(self.count_updates(), version, sha256,
                            seq=(old.seq if old else 0) + 1)
        write_new_seal(path, self._sealed)
        self.set_note(SEALED_NOTE, True)
        self._seal = SealWriter(path, self._sealed)

    def _reseal(self, updates: int = 0, version: int | None = None, sha256: str = "") -> None:
        if self._seal_later(updates, version, sha256) or self._seal is None:
            return
        s = self._sealed
        self._sealed = Seal(s.updates + updates, s.version if version is None else version,
                            sha256 or s.sha256)
        self._seal.write(self._sealed.updates, self._sealed.version, self._sealed.sha256)

    # ------------------------------------------------------------ models
    def add_model(self, version: int, blob: bytes, sha256: str, info: dict[str, Any],
                  used: Sequence[UpdateKey] | None = None, close_task: str | None = None,
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
                    "UPDATE updates SET state=?, used_in=? "
                    "WHERE device_id=? AND task_id=? AND nonce=?",
                    (UpdateState.AGGREGATED.value, version, u.device_id, u.task_id, u.nonce))
            if close_task is not None:
                self.db.execute("UPDATE tasks SET state=? WHERE task_id=?",
                                (TaskState.CLOSED.value, close_task))
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
            self.db.execute("UPDATE tasks SET state=? WHERE state=?",
                            (TaskState.CLOSED.value, TaskState.OPEN.value))
            self.db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (task.task_id, task.round, task.mode, task.model_version,
                             time.time(), TaskState.OPEN.value, message))
            self._set_members(task)

    def task_state(self, task_id: str) -> tuple[str, int, TaskState, Task] | None:
        """(mode, model_version, state, task as issued) of a task, or None if it was never
        issued; the task says whom it invited (Task.invites)."""
        row = self.db.execute("SELECT mode, model_version, state, message FROM tasks "
                              "WHERE task_id=?", (task_id,)).fetchone()
        if row is None:
            return None
        task = decode(row[3], expect=Task)
        return row[0], row[1], TaskState(row[2]), self._with_members(task)

    def open_task(self) -> tuple[Task, float] | None:
        row = self.db.execute("SELECT message, opened_at FROM tasks WHERE state=? "
                              "ORDER BY opened_at DESC LIMIT 1",
                              (TaskState.OPEN.value,)).fetchone()
        if row is None:
            return None
        task = decode(row[0], expect=Task)
        return self._with_members(task), row[1]

    def abort_task(self, task_id: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE tasks SET state=? WHERE task_id=?",
                            (TaskState.ABORTED.value, task_id))
            self.db.execute("UPDATE updates SET state=? WHERE task_id=? AND state=?",
                            (UpdateState.DISCARDED.value, task_id, UpdateState.PENDING.value))

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
        rows = self.db.execute("SELECT payload FROM updates WHERE state=? "
                               "ORDER BY received_at", (UpdateState.PENDING.value,))
        return [r[0] for r in rows]

    def iter_pending_payloads(self) -> Iterator[bytes]:
        """The pending updates' messages one at a time, in arrival order: a round is
        folded again from here without holding every payload at once."""
        for (payload,) in self.db.stream("SELECT payload FROM updates WHERE state=? "
                                         "ORDER BY received_at, rowid",
                                         (UpdateState.PENDING.value,)):
            yield payload

    def count_updates(self, state: UpdateState | str | None = None) -> int:
        if state is None:
            return self.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM updates WHERE state=?",
                               (UpdateState(state).value,)).fetchone()[0]

    def update_keys(self) -> list[tuple[str, str, str, str]]:
        """(device, task, nonce, state) of every stored update, for audits and tests."""
        return list(self.db.execute(
            "SELECT device_id, task_id, nonce, state FROM updates ORDER BY received_at"))


def _readable_seal(path: Path) -> Seal | None:
    """The seal left by the last service, or None where it is missing or unreadable."""
    try:
        return read_seal(path)
    except ValueError:
        return None
