"""The store's audit trail: which device's update went into which model version."""

from __future__ import annotations

from typing import Any

from aggregator.store_base import Tables

_ORDER = "used_in, device_id, task_id, nonce"


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
        if limit is None:
            found = [dict(zip(cols, r, strict=True)) for r in self.db.execute(
                f"SELECT {', '.join(cols)} FROM updates {where} ORDER BY {_ORDER}", args)]
            return found, len(found)
        # The total with the page, in one pass over the rows (COUNT(*) OVER ()); a
        # separate count only for a page past the end.
        page = self.db.execute(f"SELECT {', '.join(cols)}, COUNT(*) OVER () FROM updates "
                               f"{where} ORDER BY {_ORDER} LIMIT {int(limit)} "
                               f"OFFSET {int(offset)}", args).fetchall()
        if page:
            total = page[0][-1]
        else:
            total = self.db.execute(f"SELECT COUNT(*) FROM updates {where}", args).fetchone()[0]
        return [dict(zip(cols, r[:-1], strict=True)) for r in page], int(total)
