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
from aggregator.store_drift import drift_history
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


def drift(store: Store) -> dict[str, Any]:
    """What /api/drift serves (see _drift_schema)."""
    rule = stored_rule(store)
    history = drift_history(store.db, HISTORY_POINTS)
    online = {d["device_id"]: bool(d["online"]) for d in store.devices()}
    rows = []
    for device, reports in history.items():
        latest = reports[-1]
        try:
            values: dict[str, Any] = {k: latest.get(k) for k in _REPORT_KEYS}
            report = DriftReport(**values)
            why = rule.why_drifting(report) if rule.enabled else None
        except TypeError:  # a row the comparison cannot read: shown, not judged
            why = None
        rows.append({"device_id": device, "online": online.get(device), "at": latest["at"],
                     **{k: latest.get(k) for k in _REPORT_KEYS},
                     "drifting": why is not None, "why": why})
    latest_version = store.db.execute("SELECT MAX(version) FROM models").fetchone()[0] or 0
    return {"rule": {**dataclasses.asdict(rule), "enabled": rule.enabled},
            "devices": rows,
            "history": {d: [{"at": r["at"], "psi_max": r.get("psi_max"),
                             "psi_mean": r.get("psi_mean"), "accuracy": r.get("accuracy")}
                            for r in reports] for d, reports in history.items()},
            "campaigns": [{**c.to_json(), "open": c.open_at(latest_version)}
                          for c in reversed(campaigns(store))]}


def drift_metrics(store: Store) -> list[Metric]:
    """Gauges: drifting devices, the highest PSI reported, campaigns opened and open."""
    view = drift(store)
    if not view["devices"] and not view["campaigns"]:
        return []
    psi = [d["psi_max"] for d in view["devices"] if d["online"] and d["psi_max"] is not None]
    families: list[Metric] = [
        GaugeMetricFamily("fedge_drift_devices", "Online devices whose latest drift scores "
                          "pass the [drift] rule",
                          value=sum(1 for d in view["devices"] if d["online"] and d["drifting"])),
        GaugeMetricFamily("fedge_drift_campaigns", "Retraining campaigns opened (latest kept)",
                          value=len(view["campaigns"])),
        GaugeMetricFamily("fedge_drift_campaign_open", "1 while a retraining campaign's "
                          "versions are still to be made",
                          value=int(any(c["open"] for c in view["campaigns"])))]
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
    schema = {"type": "object", "properties": {
        "rule": rule, "devices": {"type": "array", "items": device},
        "history": {"type": "object", "additionalProperties": {"type": "array",
                                                               "items": point}},
        "campaigns": {"type": "array", "items": campaign}}}
    schema["required"] = list(schema["properties"])
    return schema
