"""The operations files in deploy/ speak of metrics the gateway really exports: every
`fedge_*` name in the alert rules and the Grafana dashboard appears in /metrics."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml

from aggregator.status import BROKER_NOTE, FINISHED_NOTE
from aggregator.store import Store
from aggregator.web import create_app
from edge_client.shared.protocol import Task, TrainConfig, encode
from edge_client.shared.protocol.chunking import sha256_hex

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bfedge_[a-z_]+\b")


def _exported(tmp_path) -> set[str]:
    """Metric names of a store in which every metric has something to say."""
    store = Store(tmp_path / "agg.sqlite3")
    store.add_model(0, b"m", sha256_hex(b"m"), {"round": 0})
    store.add_model(1, b"n", sha256_hex(b"n"), {"round": 1, "accuracy": 0.9, "epsilon": 2.0})
    store.set_note("privacy", {"mode": "central", "delta": 1e-5, "target_epsilon": 8.0})
    store.set_note(BROKER_NOTE, {"connected": False, "since": time.time(), "reason": "x"})
    store.set_note(FINISHED_NOTE, True)
    task = Task(task_id="r2", mode="sync", round=2, model_version=1, train=TrainConfig())
    store.add_task(task, encode(task))
    store.abort_task("r2")
    store.add_rejection("d", "n", "bad")
    store.close()
    text = create_app(tmp_path / "agg.sqlite3", None, None).test_client().get(
        "/metrics").get_data(as_text=True)
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_metric_in_the_alert_rules_is_exported(tmp_path):
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    [group] = rules["groups"]
    alerts = {rule["alert"]: rule for rule in group["rules"]}
    assert {"FedgeBrokerDisconnected", "FedgeNoEligibleDevices", "FedgeRoundsAborting",
            "FedgeRejectionSpike", "FedgePrivacyBudgetNearlySpent"} <= alerts.keys()
    assert all({"expr", "labels", "annotations"} <= rule.keys() for rule in alerts.values())
    used = {m for rule in alerts.values() for m in METRIC.findall(rule["expr"])}
    missing = used - _exported(tmp_path)
    assert not missing, f"alert rules use metrics /metrics does not export: {missing}"


def test_every_metric_on_the_grafana_dashboard_is_exported(tmp_path):
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert len(dashboard["panels"]) >= 8 and used
    missing = used - _exported(tmp_path)
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"
