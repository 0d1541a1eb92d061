"""Is the store whole? Checked before the service opens it, and by `fedge aggregator check`.

What is checked: SQLite can read the main file and `PRAGMA quick_check` finds nothing;
the store holds at least what its seal records (aggregator/store_seal.py: a deleted,
emptied or cut WAL loses commits that SQLite cannot see are gone); model blobs match
their stored SHA-256 (at start: the versions that are served, the latest and the
retained delta chain; `check`: every version); versions run 0..N without a gap; no
update is marked used by a version that does not exist.

The check opens the file read-only, so it never checkpoints or deletes a damaged WAL:
`recover` can still copy it aside.

SQLite only: a store in PostgreSQL (`db_url`) is not checked here (the service skips it
with one INFO line; `fedge aggregator check` and `recover` refuse with one line).
"""

from __future__ import annotations

import hashlib
import sqlite3
import zlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from aggregator.store_seal import Seal, read_seal, seal_path

SEALED_NOTE = "sealed"  # aggregator/store.py writes it once the store has a seal file
# The DP steps of versions `recover` dropped: they were published, so their privacy cost
# stays spent (aggregator/privacy/hooks.py adds them to the accountant).
DROPPED_DP_NOTE = "privacy_dropped_versions"


class ProblemKind(Enum):
    UNREADABLE = "unreadable"  # SQLite cannot open or read the main file
    CORRUPT = "corrupt"  # PRAGMA quick_check found damage in the main file
    LOST_UPDATES = "lost_updates"  # fewer updates than the seal records
    LOST_VERSIONS = "lost_versions"  # an older latest version than the seal records
    SEAL_MISMATCH = "seal_mismatch"  # the sealed version is another model than the one sealed
    SEAL_MISSING = "seal_missing"  # the store was sealed, but the seal file is gone
    SEAL_UNREADABLE = "seal_unreadable"  # the seal file has no valid record
    MODEL_HASH = "model_hash"  # a model blob fails its SHA-256
    VERSION_CHAIN = "version_chain"  # versions do not run 0..N
    ORPHAN_UPDATES = "orphan_updates"  # updates marked used by a version that does not exist
    DOWNLINK_STATE = "downlink_state"  # the latest version's encoder residual is damaged

    @property
    def main_file(self) -> bool:
        """Damage only a backup can mend: `recover` cannot rebuild from this file."""
        return self in (ProblemKind.UNREADABLE, ProblemKind.CORRUPT)


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str
    versions: tuple[int, ...] = ()  # the model versions concerned, if any


@dataclass
class StoreReport:
    """What the store holds and what is wrong with it."""

    db_path: Path
    exists: bool = False
    updates: int = 0
    latest_version: int = -1  # -1: no model stored
    seal: Seal | None = None
    checked_versions: tuple[int, ...] = ()  # whose blobs were hashed
    problems: list[Problem] = field(default_factory=list)
    sealed_note: bool = False  # the store says it has had a seal file
    sealed_version_sha256: str | None = None  # the stored SHA-256 of the sealed version

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lost_updates(self) -> int:
        return max(0, self.seal.updates - self.updates) if self.seal else 0

    @property
    def lost_versions(self) -> int:
        return max(0, self.seal.version - self.latest_version) if self.seal else 0

    def kinds(self) -> set[ProblemKind]:
        return {p.kind for p in self.problems}

    def bad_versions(self) -> list[int]:
        return sorted({v for p in self.problems for v in p.versions})

    def to_json(self) -> dict[str, Any]:
        seal = self.seal
        return {"db_path": str(self.db_path), "ok": self.ok, "exists": self.exists,
                "updates": self.updates, "latest_version": self.latest_version,
                "seal": None if seal is None else {"updates": seal.updates,
                                                   "version": seal.version,
                                                   "sha256": seal.sha256},
                "lost_updates": self.lost_updates, "lost_versions": self.lost_versions,
                "checked_versions": list(self.checked_versions),
                "problems": [{"kind": p.kind.value, "message": p.message,
                              "versions": list(p.versions)} for p in self.problems]}

    def lines(self) -> list[str]:
        """For people: the verdict, each problem, what the store and the seal hold."""
        head = "ok" if self.ok else f"DAMAGED ({len(self.problems)} problem" \
            f"{'s' if len(self.problems) != 1 else ''})"
        out = [f"store {self.db_path}: {head}"]
        out += [f"  {p.kind.value}: {p.message}" for p in self.problems]
        versions = ("no model" if self.latest_version < 0
                    else f"model versions 0..{self.latest_version}")
        out.append(f"  holds {self.updates} acknowledged updates, {versions}"
                   if self.exists else "  the main file does not exist or is empty")
        if self.seal is not None:
            out.append(f"  seal {seal_path(self.db_path)}: {self.seal.updates} updates, "
                       f"version {self.seal.version}")
        if self.checked_versions:
            out.append(f"  model blobs checked against their SHA-256: "
                       f"{_span(self.checked_versions)}")
        return out


class StoreDamaged(ValueError):
    """The service refuses to start on a damaged store: one line says why and what next."""

    def __init__(self, report: StoreReport, config: str = "aggregator.toml") -> None:
        self.report = report
        first = report.problems[0].message if report.problems else "damaged"
        more = len(report.problems) - 1
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        super().__init__(
            f"refusing to start: the store {report.db_path} is damaged: {first}{also}; "
            f"nothing was changed. See `fedge aggregator check --config {config}`, then "
            f"`fedge aggregator recover --config {config}` (it backs the files up first)")


def refuse_if_damaged(db_path: Path, keep_deltas: int) -> StoreReport:
    """Check before the service opens the store; StoreDamaged if anything is wrong."""
    report = check_store(db_path, served=max(1, keep_deltas))
    if not report.ok:
        raise StoreDamaged(report)
    return report


def check_store(db_path: Path, served: int | None = None) -> StoreReport:
    """Check the store without changing it. `served`: hash the blobs of the latest this
    many versions only; None: every version."""
    db_path = Path(db_path)
    report = StoreReport(db_path)
    try:
        report.seal = read_seal(seal_path(db_path))
    except ValueError as exc:
        report.problems.append(Problem(ProblemKind.SEAL_UNREADABLE, str(exc)))
    except OSError as exc:
        report.problems.append(Problem(ProblemKind.SEAL_UNREADABLE,
                                       f"cannot read {seal_path(db_path)}: {exc}"))
    report.exists = db_path.exists() and db_path.stat().st_size > 0
    if report.exists:
        try:
            if not _check_database(report, served):
                return report
        except sqlite3.DatabaseError as exc:
            report.problems.insert(0, Problem(ProblemKind.UNREADABLE,
                                              f"SQLite cannot read {db_path}: {exc}"))
            return report
    _compare_with_seal(report)
    return report


def _check_database(report: StoreReport, served: int | None) -> bool:
    """Fill in what the file holds; False when it is too damaged to go on."""
    uri = report.db_path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        found = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        if found != ["ok"]:
            report.problems.insert(0, Problem(
                ProblemKind.CORRUPT, f"SQLite's quick_check finds the main file "
                f"{report.db_path} damaged: {'; '.join(found)[:300]}"))
            return False
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "updates" in tables:
            report.updates = db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]
        if "notes" in tables:
            report.sealed_note = db.execute("SELECT 1 FROM notes WHERE key=?",
                                            (SEALED_NOTE,)).fetchone() is not None
        if "models" in tables:
            _check_models(db, report, served)
            if "updates" in tables:
                _check_used_in(db, report)
            if "downlink_state" in tables:
                _check_residual(db, report)
    finally:
        db.close()
    return True


def _check_models(db: sqlite3.Connection, report: StoreReport, served: int | None) -> None:
    count, low, high = db.execute("SELECT COUNT(*), MIN(version), MAX(version) FROM models"
                                  ).fetchone()
    if count == 0:
        return
    report.latest_version = high
    if low != 0 or high - low + 1 != count:
        present = {v for (v,) in db.execute("SELECT version FROM models")}
        missing = tuple(v for v in range(0, high + 1) if v not in present)
        report.problems.append(Problem(
            ProblemKind.VERSION_CHAIN, f"model versions do not run 0..{high}: "
            f"{len(missing)} missing ({_span(missing)})", missing[:1]))
    first = 0 if served is None else max(0, high - served + 1)
    bad = []
    checked = []
    for version, sha256, blob in db.execute(
            "SELECT version, sha256, blob FROM models WHERE version >= ? ORDER BY version",
            (first,)):
        checked.append(version)
        if not isinstance(blob, bytes) or hashlib.sha256(blob).hexdigest() != sha256:
            bad.append(version)
    report.checked_versions = tuple(checked)
    if bad:
        report.problems.append(Problem(
            ProblemKind.MODEL_HASH, f"the model blob of version{'s' if len(bad) > 1 else ''} "
            f"{_span(bad)} fails its stored SHA-256", tuple(bad)))
    if report.seal is not None and report.seal.version >= 0:
        row = db.execute("SELECT sha256 FROM models WHERE version=?",
                         (report.seal.version,)).fetchone()
        report.sealed_version_sha256 = None if row is None else row[0]


def _check_used_in(db: sqlite3.Connection, report: StoreReport) -> None:
    orphans, low = db.execute(
        "SELECT COUNT(*), MIN(used_in) FROM updates WHERE used_in IS NOT NULL AND "
        "used_in NOT IN (SELECT version FROM models)").fetchone()
    if orphans:
        report.problems.append(Problem(
            ProblemKind.ORPHAN_UPDATES, f"{orphans} updates are marked used by model "
            f"versions the store does not hold (from version {low})"))


def _check_residual(db: sqlite3.Connection, report: StoreReport) -> None:
    """The residual the service will continue from: its CRC (ErrorFeedback.to_bytes)."""
    row = db.execute("SELECT residual FROM downlink_state WHERE version=?",
                     (report.latest_version,)).fetchone()
    data = row[0] if row is not None else None
    if data is None:
        return
    if not isinstance(data, bytes) or len(data) < 5 or \
            zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        report.problems.append(Problem(
            ProblemKind.DOWNLINK_STATE, f"the downlink encoder's residual stored with "
            f"version {report.latest_version} fails its CRC"))


def _compare_with_seal(report: StoreReport) -> None:
    seal = report.seal
    if seal is None:
        if report.sealed_note:
            report.problems.insert(0, Problem(
                ProblemKind.SEAL_MISSING, f"the seal file {seal_path(report.db_path)} is "
                "missing, so lost commits cannot be ruled out"))
        return
    lost = []
    if report.lost_updates:
        lost.append(Problem(ProblemKind.LOST_UPDATES, (
            f"the seal records {seal.updates} acknowledged updates; the store holds "
            f"{report.updates}: {report.lost_updates} lost"
            + (" (was the WAL file deleted or cut?)" if report.exists
               else " (the main file is missing or empty)"))))
    if report.lost_versions:
        holds = ("no model" if report.latest_version < 0
                 else f"versions up to {report.latest_version}")
        lost.append(Problem(ProblemKind.LOST_VERSIONS, (
            f"the seal records model version {seal.version}; the store holds {holds}: "
            f"{report.lost_versions} lost")))
    elif seal.version >= 0 and report.sealed_version_sha256 not in (None, seal.sha256):
        stored = str(report.sealed_version_sha256)[:12]
        lost.append(Problem(ProblemKind.SEAL_MISMATCH, (
            f"model version {seal.version} in the store is not the one sealed "
            f"(SHA-256 {stored}..., sealed {seal.sha256[:12]}...)")))
    report.problems[0:0] = lost


def _span(versions: tuple[int, ...] | list[int]) -> str:
    """1, 2, 3, 7 -> '1..3, 7' (at most a few ranges)."""
    ranges: list[list[int]] = []
    for v in versions:
        if ranges and v == ranges[-1][1] + 1:
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    text = [f"{a}..{b}" if b > a else f"{a}" for a, b in ranges[:4]]
    return ", ".join(text) + (", ..." if len(ranges) > 4 else "")
