"""What the aggregator keeps of a secure round in SQLite: masked data and ids, never an
unmasked input.

One row per round (its task id): the participants, the phase it reached, and the running
sum mod 2**bits of the masked inputs received so far. A masked input alone is uniformly
random mod 2**bits, and so is any partial sum of them (the self-masks never cancel), so
this row can be read by anyone who can read the database file without revealing a
device's update. The unmasked total lives only in memory until it becomes the model.
It shares the service's store connection (and so its durability settings; SQLite or
PostgreSQL, aggregator/store_db.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from aggregator.store_db import StoreDB
from edge_client.shared.secagg.prg import to_wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS secagg_rounds (
    task_id TEXT PRIMARY KEY,
    opened_at REAL NOT NULL,
    state TEXT NOT NULL,          -- open | done | aborted
    phase TEXT NOT NULL,          -- the phase the round is in (or ended in)
    participants TEXT NOT NULL,   -- JSON list of invited device ids
    bits INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    masked_count INTEGER NOT NULL,
    masked_sum BLOB NOT NULL,     -- sum mod 2**bits of the masked inputs so far, as words
    info TEXT NOT NULL            -- JSON: contributors, dropouts, abort reason
);
"""


class SecAggLog:
    """The secure rounds' rows, on the service's own connection and thread."""

    def __init__(self, db: StoreDB) -> None:
        self.db = db
        self.db.executescript(SCHEMA)

    def opened(self, task_id: str, participants: tuple[str, ...], bits: int, dim: int,
               phase: str) -> None:
        zeros = to_wire(np.zeros(dim, dtype=np.uint64), bits)
        self.db.execute("INSERT INTO secagg_rounds VALUES "
                        "(?, ?, 'open', ?, ?, ?, ?, 0, ?, '{}') ON CONFLICT(task_id) DO UPDATE "
                        "SET opened_at=excluded.opened_at, state=excluded.state, "
                        "phase=excluded.phase, participants=excluded.participants, "
                        "bits=excluded.bits, dim=excluded.dim, "
                        "masked_count=excluded.masked_count, masked_sum=excluded.masked_sum, "
                        "info=excluded.info",
                        (task_id, time.time(), phase, json.dumps(list(participants)), bits,
                         dim, zeros))

    def masked(self, task_id: str, masked_sum: np.ndarray, count: int, bits: int) -> None:
        """Replace the running masked sum after one more masked input came in."""
        self.db.execute("UPDATE secagg_rounds SET masked_sum=?, masked_count=? "
                        "WHERE task_id=?", (to_wire(masked_sum, bits), count, task_id))

    def phase(self, task_id: str, phase: str) -> None:
        self.db.execute("UPDATE secagg_rounds SET phase=? WHERE task_id=?", (phase, task_id))

    def ended(self, task_id: str, state: str, info: dict[str, Any]) -> None:
        self.db.execute("UPDATE secagg_rounds SET state=?, info=? WHERE task_id=?",
                        (state, json.dumps(info), task_id))

    def abort_open(self, reason: str) -> list[str]:
        """Mark every round still open as aborted (after a restart); returns their ids."""
        ids = [r[0] for r in self.db.execute(
            "SELECT task_id FROM secagg_rounds WHERE state='open'")]
        for task_id in ids:
            self.ended(task_id, "aborted", {"reason": reason})
        return ids

    def rounds(self) -> list[dict[str, Any]]:
        """Every round's row without the masked sum, for audits and tests."""
        cols = ("task_id", "opened_at", "state", "phase", "participants", "bits", "dim",
                "masked_count", "info")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM secagg_rounds "
                               "ORDER BY opened_at")
        out = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            item["participants"] = json.loads(item["participants"])
            item["info"] = json.loads(item["info"])
            out.append(item)
        return out
