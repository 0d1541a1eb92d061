"""The store's record of refusals and clipped updates, which the anomaly flags read."""

from __future__ import annotations

import time
from typing import Any

from aggregator.store_base import Tables

_CHUNK = 1000  # candidate devices named per query (PostgreSQL: a plan cost under its
#                JIT inlining threshold at 10,000 devices)


class RejectionTables(Tables):
    """Rejections (pruned as they come) and clipping, and each device's recent outcomes."""

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
        synchronous commit makes it durable), so a flood of junk costs no disk flushes;
        in a group commit (Store.group) it is part of the group."""
        with self._soft_writes():
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

    def device_outcomes(self, window: int, clip_factor: float, device_id: str | None = None,
                        min_bad: int | None = None) -> list[dict[str, Any]]:
        """Per device, its last `window` outcomes: stored updates and rejections, newest
        first. `rejected` and `clipped` count the bad ones among them (a clipped update
        counts when its norm was >= clip_factor times its version's median norm: an
        outlier among its peers); `clipped_total` counts every clipped update ever.
        `min_bad`: only the devices with at least that many rejected and clipped ones."""
        params = {"window": window, "factor": clip_factor, "device": device_id,
                  "bad": min_bad}
        if device_id is not None:
            # For one device (after each rejection), each branch reads only its newest
            # `window` rows through an index: the cost does not grow with the history.
            return self._outcomes("u.device_id = :device", "device_id = :device", params,
                                  newest=True)
        if min_bad is None or min_bad < 1:
            return self._outcomes("", "", params)
        # Only a device with a rejection or a clipped update can have a bad outcome: the
        # others' updates (most of a healthy fleet) are not ranked. The candidates are
        # named in the query, a chunk at a time, so that both engines read them by index.
        candidates = sorted(r[0] for r in self.db.execute(
            "SELECT device_id FROM rejections UNION SELECT device_id FROM clipping"))
        rows: list[dict[str, Any]] = []
        for start in range(0, len(candidates), _CHUNK):
            part = {f"d{i}": d for i, d in enumerate(candidates[start:start + _CHUNK])}
            names = ", ".join(f":{name}" for name in part)
            rows += self._outcomes(f"u.device_id IN ({names})", f"device_id IN ({names})",
                                   {**params, **part})
        return rows

    def _outcomes(self, where_u: str, where_r: str, params: dict[str, Any],
                  newest: bool = False) -> list[dict[str, Any]]:
        """device_outcomes over the updates and rejections these conditions select."""
        where_u = f"WHERE {where_u}" if where_u else ""
        where_r = f"WHERE {where_r}" if where_r else ""
        newest_u = "ORDER BY u.received_at DESC LIMIT :window" if newest else ""
        newest_r = "ORDER BY at DESC LIMIT :window" if newest else ""
        having = "" if params["bad"] is None else "HAVING SUM(rejected) + SUM(clipped) >= :bad"
        rows = self.db.execute(f"""
            WITH events AS (
                SELECT * FROM (
                    SELECT u.device_id, u.received_at AS at,
                           CAST(EXISTS (SELECT 1 FROM clipping c WHERE c.version = u.used_in
                                        AND c.device_id = u.device_id
                                        AND c.norm >= :factor * c.median) AS INTEGER)
                               AS clipped,
                           0 AS rejected, NULL AS reason
                    FROM updates u {where_u} {newest_u}) AS stored
                UNION ALL
                SELECT * FROM (
                    SELECT device_id, at, 0, 1, reason FROM rejections {where_r} {newest_r})
                    AS refused
            ), ranked AS (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY at DESC) AS n
                FROM events
            )
            SELECT device_id, COUNT(*), SUM(rejected), SUM(clipped),
                   (SELECT COUNT(*) FROM clipping c WHERE c.device_id = ranked.device_id),
                   (SELECT reason FROM rejections r WHERE r.device_id = ranked.device_id
                    ORDER BY at DESC LIMIT 1)
            FROM ranked WHERE n <= :window GROUP BY device_id {having} ORDER BY device_id""",
            params)
        cols = ("device_id", "recent", "rejected", "clipped", "clipped_total",
                "last_rejection")
        return [dict(zip(cols, r, strict=True)) for r in rows]
