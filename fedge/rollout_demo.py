"""`fedge demo --rollout [--bad-candidate N]`: staged rollout on the demo fleet
(docs/lifecycle.md). Canary devices evaluate each candidate on a held-out fifth of their
data; with --bad-candidate the N-th candidate training makes is corrupted on purpose (its
weights negated), so the canaries catch it and the rule rolls it back while production
keeps serving. The summary's `rollout` key says what happened."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.core.versions import Tamper
from aggregator.lifecycle import RolloutConfig, Stage
from aggregator.store import Store
from edge_client.shared.protocol import Weights

HOLDOUT = 0.2  # of each device's shard, kept out of training for canary evaluations


def demo_rollout(devices: int) -> RolloutConfig:
    """Two of five devices are canaries; both must report; a 5-point margin (two
    devices make a noisy worst decile)."""
    fraction = 0.4
    return RolloutConfig(canary_fraction=fraction,
                         min_canary_reports=max(1, round(fraction * devices)),
                         margin=0.05, canary_timeout_s=60.0)


def split_holdout(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                          tuple[np.ndarray, np.ndarray]]:
    """(train x, train y, (held-out x, held-out y)): the last fifth held out."""
    n = max(1, round(len(x) * HOLDOUT))
    return x[:-n], y[:-n], (x[-n:], y[-n:])


def corrupt_nth_candidate(n: int) -> Tamper:
    """The aggregator's hook: the n-th version training makes has its weights negated
    (copies made by a rollback do not count)."""
    made = [0]

    def tamper(version: int, weights: Weights) -> Weights:
        made[0] += 1
        if made[0] != n:
            return weights
        return {name: -w for name, w in weights.items()}
    return tamper


class ServedLog:
    """Which versions each device's app was handed to serve (the on_model hook)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served: dict[str, list[int]] = defaultdict(list)

    def hook(self, device: str) -> Callable[[int, dict, Weights], None]:
        def on_model(version: int, arch: dict, weights: Weights) -> None:
            with self._lock:
                self.served[device].append(version)
        return on_model


def rollout_summary(db_path: Path, bad: int | None, log: ServedLog) -> dict[str, Any]:
    store = Store(db_path)
    try:
        stages = store.stages()
        audit = store.stage_audit()
        history = store.model_history()
        reports = {v: sorted(r["device_id"] for r in store.canary_reports(v))
                   for v in stages if store.canary_reports(v)}
    finally:
        store.close()
    copies = {r.version: r.metric("copy_of") for r in history
              if r.metric("copy_of") is not None}
    made = [r.version for r in history if r.version > 0 and r.version not in copies]
    bad_version = made[bad - 1] if bad is not None and bad <= len(made) else None
    canaries = set(reports.get(bad_version, [])) if bad_version is not None else set()
    return {
        "bad_candidate": bad, "bad_version": bad_version,
        "stages": {str(v): s.value for v, s in stages.items()},
        "promoted": [c.version for c in audit if c.actor == "rule"
                     and c.after is Stage.PRODUCTION and c.version not in copies],
        "rolled_back": [c.version for c in audit if c.after is Stage.ROLLED_BACK],
        "copies": {str(v): s for v, s in copies.items()},
        "decisions": [{"version": c.version, "to": c.after.value, "reason": c.reason}
                      for c in audit if c.actor == "rule" and c.after in (
                          Stage.PRODUCTION, Stage.ROLLED_BACK) and c.version not in copies],
        "canary_reports": {str(v): d for v, d in reports.items()},
        "production": max((v for v, s in stages.items() if s is Stage.PRODUCTION),
                          default=None),
        "bad_version_served_by": sorted(d for d, vs in log.served.items()
                                        if bad_version in vs),
        "bad_version_served_by_non_canary": sorted(
            d for d, vs in log.served.items() if bad_version in vs and d not in canaries),
        "served_at_end": {d: vs[-1] for d, vs in sorted(log.served.items()) if vs},
    }
