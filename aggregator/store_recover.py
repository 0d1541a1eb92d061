"""`fedge aggregator recover`: back the damaged files up, rebuild what can be rebuilt,
re-seal to what the store really holds, and say exactly what was lost.

What it can rebuild: model versions whose blobs fail their SHA-256 are dropped, from the
first bad one on (every later version was computed from it), and the updates they used
go back to pending when their payload still matches its digest, so the next version
includes them again. Updates marked used by a missing version are reopened the same
way. What it cannot: updates and versions lost with a WAL (the seal says how many), and
a main file SQLite cannot read; for that, restore a backup. Stop the service first.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.privacy.hooks import SUMMARY_NOTE
from aggregator.store import Store
from aggregator.store_check import DROPPED_DP_NOTE, ProblemKind, StoreReport, check_store
from aggregator.store_db import StoreDB
from aggregator.store_seal import seal_in_use, seal_path


@dataclass
class RecoveryReport:
    before: StoreReport
    backup_dir: Path
    refused: str | None = None  # why nothing could be rebuilt (main file damage)
    dropped_versions: list[int] = field(default_factory=list)
    reopened_updates: int = 0  # back to pending: they go into the next version again
    discarded_updates: int = 0  # their payload fails its digest: unusable
    residual_dropped: bool = False  # the downlink error feedback restarts from zero
    private: bool = False  # the federation uses DP: lost versions' cost is not counted
    after: StoreReport | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and self.after is not None and self.after.ok

    def lines(self) -> list[str]:
        b = self.before
        out = [f"backed up the store's files to {self.backup_dir}"]
        if self.refused is not None:
            return [*out, f"cannot recover: {self.refused}"]
        if b.lost_updates:
            out.append(f"lost for good: {b.lost_updates} acknowledged updates (the seal "
                       f"recorded {b.seal.updates if b.seal else 0}, the store held "
                       f"{b.updates}); their devices will not send them again")
        if b.lost_versions:
            out.append(f"lost for good: model versions {b.latest_version + 1}.."
                       f"{b.seal.version if b.seal else 0}; the service makes new versions "
                       f"from {max(0, b.latest_version)} on")
        if b.lost_versions and self.private:
            out.append(f"privacy: the DP cost of the {b.lost_versions} lost versions was "
                       "lost with them, so epsilon from now on is too low by up to that "
                       "many versions; lower [privacy] target_epsilon to allow for it")
        if self.dropped_versions:
            out.append(f"dropped model versions {self.dropped_versions[0]}.."
                       f"{self.dropped_versions[-1]} (a damaged blob or a gap); "
                       f"{self.reopened_updates} of their updates are pending again, "
                       f"{self.discarded_updates} failed their digest and are discarded")
        elif self.reopened_updates or self.discarded_updates:
            out.append(f"{self.reopened_updates} updates of missing versions are pending "
                       f"again, {self.discarded_updates} discarded")
        unsure = {ProblemKind.SEAL_MISSING, ProblemKind.SEAL_UNREADABLE,
                  ProblemKind.SEAL_MISMATCH} & b.kinds()
        if unsure:
            out.append(f"the seal was {' and '.join(sorted(k.value for k in unsure))}: "
                       "whether commits were lost before cannot be told")
        if self.residual_dropped:
            out.append("the downlink residual was damaged: its error feedback restarts "
                       "from zero")
        if len(out) == 1:
            out.append("nothing was lost")
        after = self.after
        if after is not None:
            out.append(f"re-sealed: the store holds {after.updates} acknowledged updates, "
                       + ("no model (the service starts at version 0)"
                          if after.latest_version < 0
                          else f"model versions 0..{after.latest_version}")
                       + ("" if after.ok else "; STILL DAMAGED: "
                          + "; ".join(p.message for p in after.problems)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "backup_dir": str(self.backup_dir), "refused": self.refused,
                "lost_updates": self.before.lost_updates,
                "lost_versions": self.before.lost_versions,
                "dropped_versions": self.dropped_versions,
                "reopened_updates": self.reopened_updates,
                "discarded_updates": self.discarded_updates,
                "residual_dropped": self.residual_dropped, "private": self.private,
                "before": self.before.to_json(),
                "after": None if self.after is None else self.after.to_json()}


def backup_files(db_path: Path) -> Path:
    """Copy the main file, its WAL and shm, and the seal, untouched, into a new folder."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    n = 1
    while folder.exists():
        n += 1
        folder = db_path.with_name(f"{db_path.name}.damaged-{stamp}-{n}")
    folder.mkdir(parents=True)
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), seal_path(db_path)):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    return folder


def recover_store(db_path: Path) -> RecoveryReport:
    """Back up, rebuild, re-seal; the report says what was lost and what was rebuilt."""
    db_path = Path(db_path)
    if seal_in_use(seal_path(db_path)):
        raise ValueError(f"an aggregator is serving {db_path} (it holds "
                         f"{seal_path(db_path)}): stop it before recovering the store")
    before = check_store(db_path)  # every version's blob, not only the served ones
    report = RecoveryReport(before, backup_files(db_path))
    main = [p for p in before.problems if p.kind.main_file]
    if main:
        report.refused = (f"{main[0].message}. Restore the store from a backup (docs/"
                          f"gateway.md, 'When the store is damaged'); the damaged files are "
                          f"kept in {report.backup_dir}")
        return report
    store = Store(db_path)
    try:
        report.private = ((store.note(SUMMARY_NOTE) or {}).get("mode", "off") != "off"
                          or any("dp_sampling_rate" in h.metrics
                                 for h in store.model_history()))
        _rebuild(store, before, report)
        store.keep_sealed()
    finally:
        store.close()
    report.after = check_store(db_path)
    return report


def _rebuild(store: Store, before: StoreReport, report: RecoveryReport) -> None:
    bad = before.bad_versions()  # blobs failing their hash, and the first missing version
    db = store.db
    with store._transaction():
        if bad:
            first = bad[0]
            report.dropped_versions = [v for (v,) in db.execute(
                "SELECT version FROM models WHERE version >= ? ORDER BY version", (first,))]
            _reopen(db, "used_in >= ?", (first,), report)
            _keep_dp_steps(store, first)
            db.execute("DELETE FROM models WHERE version >= ?", (first,))
            db.execute("DELETE FROM downlink_state WHERE version >= ?", (first,))
            db.execute("DELETE FROM clipping WHERE version >= ?", (first,))
            # Tasks from the new latest version on go: the service plans the next one
            # afresh, and an async task's id (v{base}-async) must be free for it again.
            db.execute("DELETE FROM tasks WHERE model_version >= ?", (first - 1,))
        _reopen(db, "used_in IS NOT NULL AND used_in NOT IN (SELECT version FROM models)",
                (), report)
        if ProblemKind.DOWNLINK_STATE in before.kinds():
            db.execute("DELETE FROM downlink_state WHERE version = ?",
                       (before.latest_version,))
            report.residual_dropped = True


def _keep_dp_steps(store: Store, first: int) -> None:
    """The dropped versions were published: their DP cost stays in the accountant."""
    steps = [{"version": h.version, "dp_sampling_rate": h.metric("dp_sampling_rate"),
              "dp_noise_multiplier": h.metric("dp_noise_multiplier")}
             for h in store.model_history() if h.version >= first
             and "dp_sampling_rate" in h.metrics and "dp_noise_multiplier" in h.metrics]
    if steps:
        store.set_note(DROPPED_DP_NOTE, [*(store.note(DROPPED_DP_NOTE) or []), *steps])


def _reopen(db: StoreDB, where: str, args: tuple, report: RecoveryReport) -> None:
    """Updates used by versions that are gone: pending again if intact, else discarded."""
    rows = db.execute(f"SELECT rowid, payload, digest FROM updates WHERE {where}", args)
    for rowid, payload, digest in rows.fetchall():
        intact = isinstance(payload, bytes) and hashlib.sha256(payload).hexdigest() == digest
        db.execute("UPDATE updates SET state=?, used_in=NULL WHERE rowid=?",
                   ("pending" if intact else "discarded", rowid))
        if intact:
            report.reopened_updates += 1
        else:
            report.discarded_updates += 1
