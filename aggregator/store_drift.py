"""Drift reports as devices sent them with their statuses, a bounded history per
device: what /api/drift and the dashboard show over time (aggregator/drift.py)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from aggregator.store_db import StoreDB
from edge_client.shared.protocol.drift import DriftReport

KEEP_PER_DEVICE = 120  # the latest reports of each device; older ones are dropped
_CHUNK = 500  # device ids per IN (...) list


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


def drift_history(db: StoreDB, per_device: int = KEEP_PER_DEVICE,
                  devices: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each device's (of `devices`, or every one's) latest `per_device` reports, oldest
    first, each with its time."""
    query = "SELECT device_id, at, report FROM drift_reports{where} ORDER BY device_id, at, rowid"
    if devices is None:
        rows: Iterable[Any] = db.execute(query.format(where=""))
    else:
        rows = [row for start in range(0, len(devices), _CHUNK)
                for row in _rows_of(db, query, devices[start:start + _CHUNK])]
    return {d: reports[-per_device:] for d, reports in sorted(_parsed(rows).items())}


def drift_devices(db: StoreDB) -> list[str]:
    """The devices with a drift report, sorted (read from the index)."""
    return [r[0] for r in db.execute("SELECT DISTINCT device_id FROM drift_reports "
                                     "ORDER BY device_id")]


def latest_reports(db: StoreDB) -> dict[str, dict[str, Any]]:
    """Each device's newest report, with its time: only those are parsed."""
    rows = db.execute("SELECT device_id, at, report FROM (SELECT device_id, at, report, "
                      "ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY at DESC, rowid "
                      "DESC) AS n FROM drift_reports) AS newest WHERE n = 1 "
                      "ORDER BY device_id")
    return {d: reports[-1] for d, reports in _parsed(rows).items()}


def _rows_of(db: StoreDB, query: str, devices: Sequence[str]) -> list[Any]:
    marks = ", ".join("?" * len(devices))
    return db.execute(query.format(where=f" WHERE device_id IN ({marks})"),
                      tuple(devices)).fetchall()


def _parsed(rows: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for device, at, text in rows:
        try:
            report = json.loads(text)
        except ValueError:
            continue
        if isinstance(report, dict):
            out[device].append({"at": at, **report})
    return out
