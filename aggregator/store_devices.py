"""The store's device tables: enrolled keys, and each device's last status."""

from __future__ import annotations

import time
from typing import Any

from aggregator.store_base import Tables
from aggregator.store_db import StoreDB
from aggregator.store_drift import add_drift_reports
from edge_client.shared.protocol import Status


def enrolled_key(db: StoreDB, device_id: str) -> str | None:
    """The enrolled, unrevoked public key of a device, or None; also what ingest workers
    read through their own read-only connection (aggregator/ingest_workers.py)."""
    row = db.execute("SELECT public_key FROM enrolment WHERE device_id=? AND "
                     "revoked_at IS NULL", (device_id,)).fetchone()
    return None if row is None else row[0]


class DeviceTables(Tables):
    """Enrolment (who may send) and presence (who was last seen how)."""

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
        return enrolled_key(self.db, device_id)

    def enrolment(self, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Enrolled keys by device id: every one, or `limit` of them from `offset` on."""
        cols = ("device_id", "public_key", "enrolled_at", "revoked_at")
        page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM enrolment "
                               f"ORDER BY device_id{page}")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def count_enrolled(self) -> int:
        """Devices with an enrolled key, revoked or not."""
        return int(self.db.execute("SELECT COUNT(*) FROM enrolment").fetchone()[0])

    def set_device(self, status: Status) -> None:
        self.set_devices([(status, time.time())])

    def set_devices(self, seen: list[tuple[Status, float]]) -> None:
        """Each device's last status, seen at unix time; all in one write that
        acknowledges nothing, so no fsync of its own (presence is soft state,
        aggregator/presence.py)."""
        with self._soft_writes():
            self.db.executemany(
                "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO "
                "UPDATE SET online=excluded.online, eligible=excluded.eligible, "
                "reason=excluded.reason, model_version=excluded.model_version, "
                "last_seen=excluded.last_seen, battery_pct=excluded.battery_pct",
                [(status.device_id, int(status.online), int(status.eligible), status.reason,
                  status.model_version, at, status.battery_pct) for status, at in seen])
            add_drift_reports(self.db, [(s.device_id, at, s.drift) for s, at in seen
                                        if s.drift is not None])

    def forget_device(self, device_id: str) -> None:
        self.db.execute("DELETE FROM devices WHERE device_id=?", (device_id,))
        self.db.execute("DELETE FROM drift_reports WHERE device_id=?", (device_id,))

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
