"""What the dashboard, the API and the metrics show, read from the aggregator's store.

Only reads. Where `Store` has no method for a figure (counts grouped by device or
state, a model blob by version) this module runs its own SELECT on the store's
connection, so the dashboard never loads every update or every model to count them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.anomalies import device_anomalies, stored_config
from aggregator.fairness import SECURE_NOTE, Fairness
from aggregator.personalize import merged
from aggregator.states import UPDATE_STATES
from aggregator.store import Store
from aggregator.version_record import VersionRecord
from aggregator.web.paging import Page, chunks


@dataclass(frozen=True)
class ModelBlob:
    """One stored model version as devices receive it (a MessagePack `Model`)."""

    version: int
    sha256: str
    blob: bytes


def finite(value: Any) -> Any:
    """NaN and infinities become None: JSON has no such numbers and browsers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


PER_DEVICE_INFO = ("devices", "fairness", "personal")  # what grows with the cohort


def versions(store: Store, brief: bool = False) -> list[dict[str, Any]]:
    """One row per model version: its number, creation time and the service's info.
    `brief`: without the parts with a row per device (PER_DEVICE_INFO: the
    contributors, the fairness figures, the personal figures, which /api/fairness and
    /api/personal serve), and with `device_count`, the contributors' number."""
    return [finite(_brief(record.to_json()) if brief else record.to_json())
            for record in store.model_history()]


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in PER_DEVICE_INFO}
    if isinstance(row.get("devices"), list):
        out["device_count"] = len(row["devices"])
    return out


def version_rows(history: list[VersionRecord], brief: bool = False) -> list[dict[str, Any]]:
    """`versions` from records already read (version_records: NaN already None)."""
    return [_brief(record.to_json()) if brief else record.to_json() for record in history]


def versions_with_stages(store: Store, brief: bool = False,
                         rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The versions as the API lists them (`rows`: as `versions` gives them): each with
    its stage (docs/lifecycle.md)."""
    stages = store.stages()
    return [{**row, "stage": None if (s := stages.get(row["version"])) is None else s.value}
            for row in (versions(store, brief) if rows is None else rows)]


def stages(store: Store) -> dict[str, Any]:
    """Each version's stage, the open canary with its reports, the pin, the audit trail
    and operators' commands not applied yet."""
    note = store.note("canary")
    canary = None if note is None else {**note, "reports": store.canary_reports(
        int(note["candidate"]))}
    return {"stages": [{"version": v, "stage": s.value} for v, s in store.stages().items()],
            "canary": finite(canary), "pinned": store.note("rollout_pin"),
            "audit": [c.to_json() for c in store.stage_audit()],
            "waiting": [{"id": r.id, "command": r.command.value, "version": r.version,
                         "actor": r.actor, "at": r.at}
                        for r in store.waiting_stage_requests()]}


def version_records(store: Store) -> list[VersionRecord]:
    """Every version's record, NaN and infinities as None (as the API shows them)."""
    return [VersionRecord.from_json(row) for row in versions(store)]


def overview(store: Store, history: list[VersionRecord] | None = None) -> dict[str, Any]:
    """The headline numbers; a store without any model yet gives nulls and zeros.
    `history`: version_records(store), when the caller has it already."""
    history = version_records(store) if history is None else history
    latest = history[-1] if history else None
    evaluated = [h for h in history if h.accuracy is not None]
    return {
        "model_version": latest.version if latest else None,
        "mode": _mode(store, history),
        "rounds": latest.round if latest and latest.round is not None else 0,
        "versions": sum(1 for h in history if h.version > 0),
        "accuracy": evaluated[-1].accuracy if evaluated else None,
        "loss": evaluated[-1].loss if evaluated else None,
        "evaluated_version": evaluated[-1].version if evaluated else None,
        **uplink(history),
        "updates": update_counts(store),
        "secure_contributions": sum(secure_contributions(store).values()),
        "rejections": rejection_count(store),
        "devices": device_counts(store),
        "enrolled": store.db.execute("SELECT COUNT(*) FROM enrolment "
                                     "WHERE revoked_at IS NULL").fetchone()[0],
        "privacy": privacy(store, history),
        "stopped": store.note("stopped"),
        "generated_at": time.time(),
    }


def device_counts(store: Store) -> dict[str, int]:
    """Devices with a status: known, online, and online and eligible; counted by the
    database, not by a Python row per device."""
    known, online, eligible = store.db.execute(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN online<>0 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN online<>0 AND eligible<>0 THEN 1 ELSE 0 END), 0) "
        "FROM devices").fetchone()
    return {"known": int(known), "online": int(online), "eligible": int(eligible)}


def privacy(store: Store, history: list[VersionRecord]) -> dict[str, Any] | None:
    """The [privacy] settings the service runs with and the epsilon spent so far; None
    when no version was made with DP and the service does not run with it."""
    settings = store.note("privacy")
    spent = [h for h in history if h.epsilon is not None]
    if settings is None and not spent:
        return None
    if settings is None:  # privacy turned off since: what the spent epsilon is measured at
        settings = {"mode": "off", "delta": spent[-1].metric("dp_delta")}
    return finite({**settings, "epsilon": spent[-1].epsilon if spent else 0.0,
                   "versions": len(spent)})


def anomalies(store: Store, page: Page, flagged: bool | None = None) -> dict[str, Any]:
    """A page of the devices' recent rejections and clipped updates, and their flags;
    `flagged` True (False): only the devices flagged (not flagged)."""
    config = stored_config(store)
    rows = [row for row in device_anomalies(store, config, flagged_only=bool(flagged))
            if flagged is None or row["flagged"] == flagged]
    return {"window": config.window, "threshold": config.threshold,
            "clip_factor": config.clip_factor, "devices": page.of(rows),
            **page.meta(len(rows))}


def uplink(history: list[VersionRecord]) -> dict[str, Any]:
    """Update bytes the versions were made from, and how much smaller than float32.

    A dense float32 update has as many values as the model, so `model_bytes` (the
    float32 model as sent) times the number of updates estimates the uncompressed size.
    """
    sent = sum(h.update_bytes or 0 for h in history)
    dense = sum((h.model_bytes or 0) * (h.updates or 0) for h in history if h.update_bytes)
    ratio = round(dense / sent, 1) if sent and dense else None
    return {"update_bytes": sent, "dense_bytes_estimate": dense, "compression_ratio": ratio}


def _mode(store: Store, history: list[VersionRecord]) -> str | None:
    """The latest version's mode, or the latest task's before any version was made."""
    for h in reversed(history):
        if h.mode:
            return h.mode
    row = store.db.execute("SELECT mode FROM tasks ORDER BY opened_at DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def last_local_accuracy(store: Store, devices: Sequence[str] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Per device (of `devices`, or every one), what its latest stored update said about
    the model it started from.

    `local_accuracy` is that model on the device's own data, before training; the update's
    `base_version` says which model. Parsed in Python rather than with json_extract: a
    device's metrics may hold NaN, which SQLite's JSON functions refuse as malformed.
    The newest update per device by a window (what SQLite's bare columns next to MAX did;
    PostgreSQL has no bare columns); for a page of devices, only their rows (by index).
    """
    newest = ("SELECT device_id, metrics, base_version FROM ("
              "SELECT device_id, metrics, base_version, ROW_NUMBER() OVER "
              "(PARTITION BY device_id ORDER BY received_at DESC) AS n "
              "FROM updates{where}) AS newest WHERE n = 1")
    if devices is None:
        rows = list(store.db.execute(newest.format(where="")))
    else:
        rows = [row for marks, part in chunks(devices) for row in store.db.execute(
            newest.format(where=f" WHERE device_id IN ({marks})"), part)]
    return {device: {"last_local_accuracy": _metric(metrics, "local_accuracy"),
                     "last_local_version": base} for device, metrics, base in rows}


def _metric(metrics: str, name: str) -> float | None:
    """A number from an update's metrics JSON; None when absent (older devices) or NaN."""
    value = json.loads(metrics).get(name)
    return finite(float(value)) if isinstance(value, int | float) else None


def secure_contributions(store: Store) -> dict[str, int]:
    """Per device, the secure rounds whose sum took its input. Under secure aggregation no
    update is stored, so the rounds' own records (aggregator/secagg/store.py) say who
    contributed; a store that never ran one has no such table."""
    if not store.db.has_table("secagg_rounds"):
        return {}
    counts: Counter[str] = Counter()
    for (info,) in store.db.execute("SELECT info FROM secagg_rounds WHERE state='done'"):
        counts.update(str(d) for d in json.loads(info).get("contributors", []))
    return dict(counts)


def _count_by_device(store: Store, query: str) -> dict[str, int]:
    return {device: n for device, n in store.db.execute(query)}


def update_counts(store: Store) -> dict[str, int]:
    """Stored updates by state; every state is present, zero when none."""
    counts = dict.fromkeys(UPDATE_STATES, 0)
    counts.update(store.db.execute("SELECT state, COUNT(*) FROM updates GROUP BY state"))
    return counts


def rejection_count(store: Store) -> int:
    return store.db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]


def stored_update_bytes(store: Store) -> int:
    """Bytes of every stored update message, any state: grows as updates arrive."""
    return store.db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM updates").fetchone()[0]


def model_blob(store: Store, version: int) -> ModelBlob | None:
    row = store.db.execute("SELECT sha256, blob FROM models WHERE version=?",
                           (version,)).fetchone()
    return None if row is None else ModelBlob(version, row[0], bytes(row[1]))


def fairness(history: list[VersionRecord], latest: int,
             top: int | None = None) -> list[dict[str, Any]]:
    """The latest `latest` versions made from updates (not version 0), newest first: each
    version's fairness figures, or a note saying why it has none. `top`: only the `top`
    largest shares in `contributions` and `weights` (`contributors` says how many
    devices there were)."""
    rows: list[dict[str, Any]] = []
    for record in reversed([h for h in history if h.version > 0][-latest:] if latest else []):
        stored = record.metric("fairness")
        row: dict[str, Any] = {"version": record.version, "created_at": record.created_at,
                               "round": record.round}
        if isinstance(stored, dict):
            figures = Fairness.from_json(stored).to_json()
            contributors = len(figures["contributions"])
            if top is not None:
                figures = {**figures, "contributions": _largest(figures["contributions"], top),
                           "weights": _largest(figures["weights"], top)}
            rows.append(finite({**row, **figures, "note": None,
                                "contributors": contributors}))
            continue
        note = SECURE_NOTE if record.secagg is not None else "not recorded for this version"
        rows.append({**row, "devices": 0, "median": None, "p10": None, "worst_decile": None,
                     "under_floor": 0, "floor": None, "contributions": {}, "weights": {},
                     "note": note, "contributors": 0})
    return rows


def _largest(shares: dict[str, float], top: int) -> dict[str, float]:
    """The `top` largest shares, largest first (ties by device id)."""
    return dict(sorted(shares.items(), key=lambda item: (-item[1], item[0]))[:top])


def personal(history: list[VersionRecord]) -> dict[str, Any]:
    """The devices' own figures (personalised or clustered federations,
    docs/heterogeneity.md): per device, from the latest version that has its row, the
    global model's and its personal model's accuracy on its held-out data and its
    cluster; their means; each cluster's size, and its model's accuracy on the gateway's
    test set at the latest version. Every device: /api/personal serves a page of them
    (paged_personal)."""
    stored = merged(record.metric("personal") for record in history)
    if stored is None:
        return {"version": None, "devices": [], "global_accuracy": None,
                "personal_accuracy": None, "cluster_sizes": {}, "cluster_accuracy": {}}
    record = next(r for r in reversed(history) if isinstance(r.metric("personal"), dict))
    devices = [{"device_id": d, "global_accuracy": row.get("global_accuracy"),
                "personal_accuracy": row.get("personal_accuracy"),
                "cluster": int(row["cluster"]) if "cluster" in row else None}
               for d, row in stored["devices"].items()]
    clusters = sorted(int(k[len("cluster"):-len("_accuracy")]) for k in record.metrics
                      if re.fullmatch(r"cluster[0-9]+_accuracy", k))
    return finite({"version": record.version, "devices": devices,
                   "global_accuracy": stored["global_accuracy"],
                   "personal_accuracy": stored["personal_accuracy"],
                   "cluster_sizes": stored["cluster_sizes"],
                   "cluster_accuracy": {str(c): record.metrics[f"cluster{c}_accuracy"]
                                        for c in clusters}})


def paged_personal(view: dict[str, Any], page: Page) -> dict[str, Any]:
    """`personal`'s answer with a page of its devices and how many there are; the means
    and cluster sizes stay those of every device."""
    return {**view, "devices": page.of(view["devices"]), **page.meta(len(view["devices"]))}
