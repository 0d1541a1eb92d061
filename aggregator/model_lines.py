"""Model lines (issue 18, "Models that change shape"): a new architecture is rolled out
as a new line of versions, not as the next step of the old one.

A line is named by its architecture: its kind and a digest of the arch
(`mlp-3f2a9c01`). When `[lines] on_arch_change =
"new_line"` and the configured model's architecture differs from the stored latest
version's, the aggregator starts the new line at the next version, from the configured
model's initial weights, sent whole (no delta from another shape). Devices that cannot
run it refuse it in their status and keep serving the old line
(edge_client/session/refusals.py); `/api/lines` says which device is on which line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from aggregator.store import Store
from edge_client.shared.protocol import Model, decode

log = logging.getLogger("aggregator.service")
ON_ARCH_CHANGE = ("keep", "new_line")
REFUSED = "model refused:"  # how a device's status reason starts when it refused one


@dataclass
class LinesConfig:
    """[lines]: what a changed [model] architecture does (docs/configuration.md)."""

    on_arch_change: str = "keep"  # "keep" serves the stored line; "new_line" rolls it out

    def __post_init__(self) -> None:
        if self.on_arch_change not in ON_ARCH_CHANGE:
            raise ValueError(f"lines.on_arch_change must be 'keep' or 'new_line', "
                             f"not {self.on_arch_change!r}")


def line_of(arch: dict[str, Any]) -> str:
    """The line an architecture belongs to: its kind and a digest of it."""
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
    return f"{arch.get('kind', 'model')}-{digest.hexdigest()[:8]}"


def starts_new_line(config: LinesConfig, stored_arch: dict[str, Any],
                    configured: dict[str, Any], version: int) -> bool:
    """Whether the configured model starts a new line after `version`; says why not."""
    if not configured or configured == stored_arch:
        return False
    if config.on_arch_change == "keep":
        log.info("aggregator: the configured model (line %s) differs from version %d's "
                 "(line %s); serving the stored line ([lines] on_arch_change = \"new_line\" "
                 "rolls the configured one out as a new line)", line_of(configured), version,
                 line_of(stored_arch))
        return False
    log.info("aggregator: starting model line %s at version %d (after line %s, version %d): "
             "the configured architecture differs; it goes to devices whole, and those that "
             "cannot run it keep serving line %s", line_of(configured), version + 1,
             line_of(stored_arch), version, line_of(stored_arch))
    return True


def version_lines(store: Store) -> dict[int, str]:
    """Each stored version's line: where its info names one, else the line before it
    (version 0 of an older store: read from its model)."""
    rows = store.db.execute("SELECT version, info FROM models ORDER BY version").fetchall()
    lines: dict[int, str] = {}
    current: str | None = None
    for version, info in rows:
        named = json.loads(info).get("line")
        if isinstance(named, str):
            current = named
        elif current is None:
            current = _line_of_stored(store, version)
        lines[version] = current
    return lines


def _line_of_stored(store: Store, version: int) -> str:
    row = store.db.execute("SELECT blob FROM models WHERE version=?", (version,)).fetchone()
    try:
        return line_of(decode(bytes(row[0]), expect=Model).arch)
    except Exception:  # a damaged row: store_check says so; here it is only unnamed
        return "unknown"


def lines_view(store: Store, limit: int | None = None, offset: int = 0,
               lines: dict[int, str] | None = None) -> dict[str, Any]:
    """What /api/lines serves: the lines with their versions and devices, and each
    device's line and refusal. `limit`: at most that many devices in `devices` (from
    `offset`, by id) and in each line's `devices`; `device_count` and `total` say how
    many there are, counted by the database. `lines`: version_lines(store), when the
    caller has it already."""
    lines = version_lines(store) if lines is None else lines
    page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
    devices = []
    for device_id, version, reason in store.db.execute(
            "SELECT device_id, model_version, reason FROM devices ORDER BY device_id" + page):
        devices.append({"device_id": device_id, "model_version": version,
                        "line": lines.get(version) if version is not None else None,
                        "refused": reason if (reason or "").startswith(REFUSED) else None})
    out: list[dict[str, Any]] = []
    for version, line in sorted(lines.items()):
        if not out or out[-1]["line"] != line:
            out.append({"line": line, "first_version": version, "last_version": version,
                        "devices": []})
        out[-1]["last_version"] = version
    per_version = dict(store.db.execute("SELECT model_version, COUNT(*) FROM devices "
                                        "WHERE model_version IS NOT NULL "
                                        "GROUP BY model_version").fetchall())
    for row in out:
        span = (row["first_version"], row["last_version"])
        row["devices"] = [r[0] for r in store.db.execute(
            "SELECT device_id FROM devices WHERE model_version BETWEEN ? AND ? "
            "ORDER BY device_id" + ("" if limit is None else f" LIMIT {int(limit)}"), span)]
        row["device_count"] = sum(n for v, n in per_version.items()
                                  if span[0] <= v <= span[1])
    total = store.db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    meta = {} if limit is None else {"total": total, "limit": limit, "offset": offset}
    return {"lines": out[::-1], "devices": devices, **meta}
