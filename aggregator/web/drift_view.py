"""Drift in the gateway's web side: /api/drift (each device's latest drift scores, their
history, the rule and the campaigns it opened), its Prometheus gauges and its OpenAPI
schema. Read from the store: the reports devices sent (aggregator/store_drift.py) and
the notes the service keeps (aggregator/drift.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from aggregator.drift import RULE_NOTE, DriftConfig, campaigns
from aggregator.store import Store
from aggregator.store_drift import drift_devices, drift_history, latest_reports
from aggregator.web.device_rows import statuses
from aggregator.web.paging import Page, page_schema
from edge_client.shared.protocol.drift import DriftReport

HISTORY_POINTS = 60  # per device, the latest reports shown over time
_REPORT_KEYS = tuple(f.name for f in dataclasses.fields(DriftReport))


def stored_rule(store: Store) -> DriftConfig:
    """The rule as the service configured it (off if it never ran or the note is bad)."""
    note = store.note(RULE_NOTE)
    try:
        return DriftConfig(**{k: v for k, v in dict(note or {}).items() if k != "enabled"})
    except (TypeError, ValueError):
        return DriftConfig()


def drift(store: Store, page: Page | None = None) -> dict[str, Any]:
    """What /api/drift serves (see _drift_schema): `page` None, every device with a
    report; else that page of them, sorted by id, read by key (`total` says how many)."""
    rule = stored_rule(store)
    meta: dict[str, int] = {}
    if page is None:
        history = drift_history(store.db, HISTORY_POINTS)
    else:
        every = drift_devices(store.db)
        meta = page.meta(len(every))
        history = drift_history(store.db, HISTORY_POINTS, page.of(every))
    online = {d: bool(row["online"]) for d, row in statuses(store, list(history)).items()}
    rows = [_judged(rule, device, reports[-1], online.get(device))
            for device, reports in history.items()]
    latest_version = store.db.execute("SELECT MAX(version) FROM models").fetchone()[0] or 0
    return {"rule": {**dataclasses.asdict(rule), "enabled": rule.enabled},
            "devices": rows, **meta,
            "history": {d: [{"at": r["at"], "psi_max": r.get("psi_max"),
                             "psi_mean": r.get("psi_mean"), "accuracy": r.get("accuracy")}
                            for r in reports] for d, reports in history.items()},
            "campaigns": [{**c.to_json(), "open": c.open_at(latest_version)}
                          for c in reversed(campaigns(store))]}


def _judged(rule: DriftConfig, device: str, latest: dict[str, Any],
            online: bool | None) -> dict[str, Any]:
    """A device's row: its latest report and whether it passes the rule."""
    try:
        values: dict[str, Any] = {k: latest.get(k) for k in _REPORT_KEYS}
        report = DriftReport(**values)
        why = rule.why_drifting(report) if rule.enabled else None
    except TypeError:  # a row the comparison cannot read: shown, not judged
        why = None
    return {"device_id": device, "online": online, "at": latest["at"],
            **{k: latest.get(k) for k in _REPORT_KEYS}, "drifting": why is not None,
            "why": why}


def drift_metrics(store: Store) -> list[Metric]:
    """Gauges: drifting devices, the highest PSI reported, campaigns opened and open.
    Only each device's newest report is read (not its history)."""
    rule = stored_rule(store)
    latest = latest_reports(store.db)
    online = {d: bool(o) for d, o in store.db.execute("SELECT device_id, online FROM devices")}
    devices = [_judged(rule, d, report, online.get(d)) for d, report in latest.items()]
    found = campaigns(store)
    if not devices and not found:
        return []
    version = store.db.execute("SELECT MAX(version) FROM models").fetchone()[0] or 0
    psi = [d["psi_max"] for d in devices if d["online"] and d["psi_max"] is not None]
    families: list[Metric] = [
        GaugeMetricFamily("fedge_drift_devices", "Online devices whose latest drift scores "
                          "pass the [drift] rule",
                          value=sum(1 for d in devices if d["online"] and d["drifting"])),
        GaugeMetricFamily("fedge_drift_campaigns", "Retraining campaigns opened (latest kept)",
                          value=len(found)),
        GaugeMetricFamily("fedge_drift_campaign_open", "1 while a retraining campaign's "
                          "versions are still to be made",
                          value=int(any(c.open_at(version) for c in found)))]
    if psi:
        families.append(GaugeMetricFamily("fedge_drift_psi_max", "Highest PSI (max over "
                                          "features) among online devices' latest reports",
                                          value=max(psi)))
    return families


def drift_schema() -> dict[str, Any]:
    """The OpenAPI schema of /api/drift's answer."""
    num = {"type": "number", "nullable": True}
    maybe_int = {"type": "integer", "nullable": True}
    text = {"type": "string"}
    report = {"psi_max": num, "psi_mean": num, "feature": maybe_int,
              "seen": {"type": "integer"}, "accuracy": num, "labelled": {"type": "integer"}}
    device = {"type": "object", "properties": {
        "device_id": text, "online": {"type": "boolean", "nullable": True},
        "at": {"type": "number"}, **report, "drifting": {"type": "boolean"},
        "why": {"type": "string", "nullable": True}}}
    point = {"type": "object", "properties": {"at": {"type": "number"}, "psi_max": num,
                                              "psi_mean": num, "accuracy": num}}
    campaign = {"type": "object", "properties": {
        "number": {"type": "integer"}, "opened_at": {"type": "number"},
        "at_version": {"type": "integer"}, "until_version": maybe_int,
        "devices": {"type": "array", "items": text}, "reason": text,
        "open": {"type": "boolean"}}}
    rule = {"type": "object", "properties": {
        "enabled": {"type": "boolean"}, "psi_threshold": num, "statistic": text,
        "accuracy_floor": num, "min_labelled": {"type": "integer"},
        "min_devices": {"type": "integer"}, "min_fraction": {"type": "number"},
        "campaign_rounds": {"type": "integer"}}}
    for part in (device, campaign, rule):
        part["required"] = list(part["properties"])
    schema: dict[str, Any] = {"type": "object", "properties": {
        "rule": rule, "devices": {"type": "array", "items": device,
                                  "description": "A page of the devices, sorted by id"},
        "history": {"type": "object", "additionalProperties": {"type": "array",
                                                               "items": point}},
        "campaigns": {"type": "array", "items": campaign}}}
    schema["properties"].update(page_schema())
    schema["required"] = list(schema["properties"])
    return schema
