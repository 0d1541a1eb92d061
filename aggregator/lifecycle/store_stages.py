"""The store's lifecycle tables: each version's stage, the audit trail of every move,
the canary reports, and operators' commands waiting for the service (a part of `Store`,
like store_devices.py). Added to older stores on open; `migrate` gives their versions a
stage once."""

from __future__ import annotations

import json
import time
from typing import Any

from aggregator.lifecycle.stages import Command, Stage, StageChange, StageRequest
from aggregator.store_base import Tables

STAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    version INTEGER PRIMARY KEY,
    stage TEXT NOT NULL,          -- candidate | canary | production | rolled_back | retired
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_audit (
    at REAL NOT NULL,
    version INTEGER NOT NULL,
    before TEXT,                  -- NULL: the version's first stage
    after TEXT NOT NULL,
    actor TEXT NOT NULL,          -- rule | operator:<who> | migration | rollout off
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS canary_reports (
    candidate INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    report TEXT NOT NULL,         -- JSON: the device's figures (docs/lifecycle.md)
    PRIMARY KEY (candidate, device_id)
);
CREATE TABLE IF NOT EXISTS stage_requests (  -- the rowid numbers them, on both engines
    command TEXT NOT NULL,        -- promote | rollback | pin
    version INTEGER NOT NULL,
    actor TEXT NOT NULL,
    at REAL NOT NULL,
    done_at REAL,                 -- NULL: waiting for the service
    outcome TEXT
);
"""
MIGRATED_NOTE = "stages_migrated"


class StageTables(Tables):
    def open_stage_tables(self) -> None:
        self.db.executescript(STAGE_SCHEMA)

    def migrate_stages(self) -> int:
        """Give every version stored before stages existed the stage production (they
        were all served in their day), once; the number of versions migrated."""
        if self._note(MIGRATED_NOTE):
            return 0
        now = time.time()
        with self._transaction():
            rows = self.db.execute("SELECT version FROM models WHERE version NOT IN "
                                   "(SELECT version FROM stages) ORDER BY version").fetchall()
            for (version,) in rows:
                why = ("the initial model" if version == 0 else
                       "stored before model stages existed: it was served")
                self._write_stage(StageChange(now, version, None, Stage.PRODUCTION,
                                              "migration", why))
            self.db.execute("INSERT INTO notes VALUES (?, 'true') ON CONFLICT(key) DO "
                            "NOTHING", (MIGRATED_NOTE,))
        return len(rows)

    def forget_missing_stages(self) -> int:
        """Stages of versions the store no longer holds (`fedge aggregator recover` drops
        damaged versions): removed, so production is always a stored version."""
        with self._transaction():
            cursor = self.db.execute("DELETE FROM stages WHERE version NOT IN "
                                     "(SELECT version FROM models)")
        return cursor.rowcount

    def _note(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM notes WHERE key=?", (key,)).fetchone() is not None

    def model_blob(self, version: int) -> bytes:
        """The stored Model message of `version`, which a rollback copies (KeyError if
        there is none)."""
        row = self.db.execute("SELECT blob FROM models WHERE version=?", (version,)).fetchone()
        if row is None:
            raise KeyError(f"no model version {version}")
        return bytes(row[0])

    def stage_of(self, version: int) -> Stage | None:
        row = self.db.execute("SELECT stage FROM stages WHERE version=?",
                              (version,)).fetchone()
        return None if row is None else Stage(row[0])

    def stages(self) -> dict[int, Stage]:
        return {v: Stage(s) for v, s in self.db.execute(
            "SELECT version, stage FROM stages ORDER BY version")}

    def set_stages(self, changes: list[StageChange]) -> None:
        """Move versions to new stages, with their audit lines, in one commit."""
        with self._transaction():
            for change in changes:
                self._write_stage(change)

    def _write_stage(self, c: StageChange) -> None:
        self.db.execute("INSERT INTO stages VALUES (?, ?, ?) ON CONFLICT(version) DO UPDATE "
                        "SET stage=excluded.stage, changed_at=excluded.changed_at",
                        (c.version, c.after.value, c.at))
        self.db.execute("INSERT INTO stage_audit VALUES (?, ?, ?, ?, ?, ?)",
                        (c.at, c.version, None if c.before is None else c.before.value,
                         c.after.value, c.actor, c.reason))

    def stages_steered(self) -> bool:
        """Whether a rule or an operator ever moved a stage (so devices must follow the
        Rollout message even with [rollout] off now)."""
        return self.db.execute("SELECT 1 FROM stage_audit WHERE actor NOT IN "
                               "('rollout off', 'migration') LIMIT 1").fetchone() is not None

    def stage_audit(self, version: int | None = None) -> list[StageChange]:
        query = "SELECT at, version, before, after, actor, reason FROM stage_audit"
        args: tuple[int, ...] = ()
        if version is not None:
            query, args = query + " WHERE version=?", (version,)
        rows = self.db.execute(query + " ORDER BY rowid", args)
        return [StageChange(at, v, None if b is None else Stage(b), Stage(a), actor, reason)
                for at, v, b, a, actor, reason in rows]

    # ------------------------------------------------------------ canary reports
    def add_canary_report(self, candidate: int, device: str, report: dict[str, Any]) -> bool:
        """Keep one device's report on `candidate`; False if it already sent one."""
        with self._transaction():
            cursor = self.db.execute("INSERT INTO canary_reports VALUES (?, ?, ?, ?) "
                                     "ON CONFLICT (candidate, device_id) DO NOTHING",
                                     (candidate, device, time.time(), json.dumps(report)))
        return cursor.rowcount == 1

    def canary_reports(self, candidate: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT report FROM canary_reports WHERE candidate=? "
                               "ORDER BY received_at, device_id", (candidate,))
        return [json.loads(r[0]) for r in rows]

    # ------------------------------------------------------------ operators' commands
    def request_stage(self, command: Command, version: int, actor: str) -> int:
        """Queue a command for the running service (it applies it on its loop)."""
        with self._transaction():
            row = self.db.execute("INSERT INTO stage_requests (command, version, actor, "
                                  "at) VALUES (?, ?, ?, ?) RETURNING rowid",
                                  (command.value, version, actor, time.time())).fetchone()
        return int(row[0])

    def waiting_stage_requests(self) -> list[StageRequest]:
        rows = self.db.execute("SELECT rowid, command, version, actor, at FROM stage_requests "
                               "WHERE done_at IS NULL ORDER BY rowid")
        return [StageRequest(i, Command(c), v, a, t) for i, c, v, a, t in rows]

    def finish_stage_request(self, request_id: int, outcome: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE stage_requests SET done_at=?, outcome=? WHERE rowid=?",
                            (time.time(), outcome, request_id))

    def stage_request(self, request_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT rowid, command, version, actor, at, done_at, outcome "
                              "FROM stage_requests WHERE rowid=?", (request_id,)).fetchone()
        cols = ("id", "command", "version", "actor", "at", "done_at", "outcome")
        return None if row is None else dict(zip(cols, row, strict=True))
