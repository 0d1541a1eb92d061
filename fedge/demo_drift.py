"""`fedge demo --drift-at R`: devices that use their model, and whose world changes.

Every device serves the global model with a Predictor that watches its inputs against
its training data (edge_client/drift/). A simulated app asks each device for
predictions on samples of its own data, and gives the labels after; from round R on, the
inputs of the first half of the devices (their training data too) come out of a changed
sensor: a gain and an offset on every pixel. Their PSI jumps, their statuses say so, and
the gateway's [drift] rule opens a retraining campaign (aggregator/drift.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.drift import DriftConfig, campaigns
from aggregator.store import Store
from edge_client.client import EdgeClient
from edge_client.predictor import Predictor

GAIN, OFFSET = 0.6, 0.3  # the changed sensor: x -> clip(GAIN * x + OFFSET, 0, 1)
BATCH = 32  # inputs per prediction request
EVERY_S = 0.05  # between requests, per device
PSI_THRESHOLD = 0.25  # the usual "significant shift"
CAMPAIGN_ROUNDS = 3


def shifted(x: np.ndarray) -> np.ndarray:
    return np.clip(GAIN * x + OFFSET, 0.0, 1.0).astype(x.dtype)


def drifting_count(devices: int) -> int:
    """The first half of the fleet drifts (at least one device)."""
    return max(1, devices // 2)


def drift_rule(devices: int) -> DriftConfig:
    """What the demo's gateway runs: half the drifting devices open a campaign."""
    return DriftConfig(psi_threshold=PSI_THRESHOLD,
                       min_devices=max(1, math.ceil(drifting_count(devices) / 2)),
                       campaign_rounds=CAMPAIGN_ROUNDS)


@dataclass
class DriftingApp:
    """The simulated app on each device: predictions, labels later, a shift at round R."""

    drift_at: int
    served_version: Callable[[], int]  # the aggregator's latest version
    devices: list[tuple[EdgeClient, Predictor, np.ndarray, np.ndarray]] = field(
        default_factory=list)
    shifted_devices: list[str] = field(default_factory=list)
    seed: int = 0

    def add(self, client: EdgeClient, predictor: Predictor, x: np.ndarray,
            y: np.ndarray) -> None:
        self.devices.append((client, predictor, x, y))

    def run(self, stop: threading.Event) -> None:
        rng = np.random.default_rng(self.seed)
        drifting = drifting_count(len(self.devices))
        while not stop.wait(EVERY_S):
            shift = self.served_version() >= self.drift_at - 1  # round R is under way
            for i, (client, predictor, x, y) in enumerate(self.devices):
                changed = shift and i < drifting
                if changed and client.config.device_id not in self.shifted_devices:
                    self.shifted_devices.append(client.config.device_id)
                    client.set_data(shifted(x), y)  # it trains on what it sees now
                if predictor.version is None:
                    continue  # no model yet
                pick = rng.integers(0, len(x), BATCH)
                inputs = shifted(x[pick]) if changed else x[pick]
                predictor.observe_label(y[pick], predicted=predictor.predict(inputs))


def drift_summary(app: DriftingApp, db_path: Path) -> dict[str, Any]:
    """The summary's `drift` key: who shifted, who reported drift, what campaign opened."""
    store = Store(db_path)  # the service closed its own at the end
    try:
        opened = [c.to_json() for c in campaigns(store)]
    finally:
        store.close()
    reports = {}
    for client, predictor, _, _ in app.devices:
        report = predictor.drift_report()
        if report is not None:
            reports[client.config.device_id] = report.to_json()
    return {"at_round": app.drift_at, "shifted_devices": list(app.shifted_devices),
            "shift": f"x -> clip({GAIN} x + {OFFSET}, 0, 1)",
            "psi_threshold": PSI_THRESHOLD, "campaign_opened": bool(opened),
            "campaigns": opened, "device_reports": reports}
