"""The store's audit trail: which device's update went into which model version."""

from __future__ import annotations

from typing import Any

from aggregator.store_base import Tables


class AuditTables(Tables):
    """Reads of the updates table by the version they went into."""

    def audit(self, version: int | None = None) -> list[dict[str, Any]]:
        """Who contributed to which model version: ids, counts and digests, never data."""
        return self.audit_page(version)[0]

    def audit_page(self, version: int | None = None, limit: int | None = None,
                   offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """`audit`, at most `limit` rows from `offset` on, and how many rows in all."""
        cols = ("used_in", "device_id", "task_id", "nonce", "num_samples", "digest",
                "received_at")
        where = "WHERE state='aggregated'" + ("" if version is None else " AND used_in=?")
        args: tuple = () if version is None else (version,)
        page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM updates {where} "
                               f"ORDER BY used_in, device_id, task_id, nonce{page}", args)
        found = [dict(zip(cols, r, strict=True)) for r in rows]
        if limit is None:
            return found, len(found)
        total = self.db.execute(f"SELECT COUNT(*) FROM updates {where}", args).fetchone()[0]
        return found, int(total)
