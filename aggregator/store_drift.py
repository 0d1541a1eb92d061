"""Drift reports as devices sent them with their statuses, a bounded history per
device: what /api/drift and the dashboard show over time (aggregator/drift.py)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from aggregator.store_db import StoreDB
from edge_client.shared.protocol.drift import DriftReport

KEEP_PER_DEVICE = 120  # the latest reports of each device; older ones are dropped


def add_drift_reports(db: StoreDB,
                      reports: list[tuple[str, float, DriftReport]]) -> None:
    """Append reports (device, unix time, report), then trim each device's history."""
    if not reports:
        return
    db.executemany("INSERT INTO drift_reports VALUES (?, ?, ?)",
                   [(d, at, json.dumps(r.to_json())) for d, at, r in reports])
    for device in {d for d, _, _ in reports}:
        db.execute("DELETE FROM drift_reports WHERE device_id=? AND rowid NOT IN (SELECT "
                   "rowid FROM drift_reports WHERE device_id=? ORDER BY at DESC, rowid DESC "
                   "LIMIT ?)", (device, device, KEEP_PER_DEVICE))


def drift_history(db: StoreDB, per_device: int = KEEP_PER_DEVICE
                  ) -> dict[str, list[dict[str, Any]]]:
    """Each device's latest `per_device` reports, oldest first, each with its time."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows = db.execute("SELECT device_id, at, report FROM drift_reports "
                      "ORDER BY device_id, at, rowid")
    for device, at, text in rows:
        try:
            report = json.loads(text)
        except ValueError:
            continue
        if isinstance(report, dict):
            out[device].append({"at": at, **report})
    return {d: reports[-per_device:] for d, reports in sorted(out.items())}
