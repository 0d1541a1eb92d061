"""Anomaly flags: devices whose updates keep being rejected or clipped.

A broken sensor, a stale firmware or an attacker shows up the same way: its updates are
refused (bad shape, wrong base, bad signature) or are far larger than the others' and
get clipped (by the DP clip, or a fixed `norm_bound`). A clipped update counts when its
norm was at least `clip_factor` times the median norm of its version's updates: a clip
set for privacy may clip most honest updates (early ones are large), so being clipped
alone says little, while being an outlier among one's peers does. A device is flagged
when at least `threshold` of its last `window` outcomes were such; the service logs a
warning when a device crosses it, and the API and dashboard show the flags
(docs/privacy.md).

The clipping counts reveal which devices' updates were large: they are for the gateway's
operators and are not covered by the DP guarantee.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.privacy.dp_strategy import CentralDp
from aggregator.store import Store
from aggregator.strategy.base import Contribution, Strategy
from aggregator.strategy.norm_bound import NormBound
from edge_client.shared.protocol.tensors import flatten_sorted

log = logging.getLogger(__name__)
SETTINGS_NOTE = "anomalies"  # the settings, for the dashboard (which has no config)


@dataclass
class AnomalyConfig:
    window: int = 10  # a device's last N outcomes: stored updates and rejections
    threshold: int = 3  # flagged when this many of them were rejected or clipped
    clip_factor: float = 3.0  # a clipped update counts when its norm >= this x the median
    #                           norm of its version (honest ones stayed under 2x on the
    #                           demo job); 0 counts every clipped update

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"anomalies.window must be >= 1, not {self.window}")
        if not 1 <= self.threshold <= self.window:
            raise ValueError(f"anomalies.threshold must be in [1, window = {self.window}], "
                             f"not {self.threshold}")
        if not (math.isfinite(self.clip_factor) and self.clip_factor >= 0):
            raise ValueError(f"anomalies.clip_factor must be a finite number >= 0, "
                             f"not {self.clip_factor}")


@dataclass(frozen=True)
class Clipping:
    """Which updates one version clipped: device -> norm before, the bound, and the
    median norm of all the version's updates."""

    norms: dict[str, float]
    bound: float
    median: float


def flagged(row: dict[str, Any], config: AnomalyConfig) -> bool:
    return row["rejected"] + row["clipped"] >= config.threshold


def device_anomalies(store: Store, config: AnomalyConfig, device_id: str | None = None,
                     flagged_only: bool = False) -> list[dict[str, Any]]:
    """Every device's recent outcomes (see `Store.device_outcomes`) and its flag;
    `flagged_only`: only the flagged devices' (chosen by the database)."""
    bad = config.threshold if flagged_only else None
    return [{**row, "flagged": flagged(row, config)} for row in
            store.device_outcomes(config.window, config.clip_factor, device_id, bad)]


def stored_config(store: Store) -> AnomalyConfig:
    """The settings the service wrote at start, or the defaults (an older store)."""
    raw = store.note(SETTINGS_NOTE)
    try:
        return AnomalyConfig(**raw) if isinstance(raw, dict) else AnomalyConfig()
    except (TypeError, ValueError):
        return AnomalyConfig()


def clipping_of(strategy: Strategy, contributions: list[Contribution]) -> Clipping | None:
    """What the strategy just clipped: the central DP wrapper says; a fixed norm bound is
    recomputed (a median bound clips half the updates by design, so it says nothing)."""
    if isinstance(strategy, CentralDp) and strategy.state.last is not None:
        last = strategy.state.last
        return Clipping(last.clipped, last.clip, last.median_norm)
    if isinstance(strategy, NormBound) and strategy.bound is not None:
        norms = {c.device_id: float(np.linalg.norm(flatten_sorted(c.delta)))
                 for c in contributions}
        return Clipping({d: n for d, n in norms.items() if n > strategy.bound},
                        strategy.bound, float(np.median(list(norms.values()))))
    return None


class AnomalyWatch:
    """Records clipping, and logs a warning when a device becomes flagged."""

    def __init__(self, store: Store, config: AnomalyConfig) -> None:
        self.store = store
        self.config = config
        store.set_note(SETTINGS_NOTE, {"window": config.window, "threshold": config.threshold,
                                       "clip_factor": config.clip_factor})
        self.flagged = {r["device_id"] for r in device_anomalies(store, config) if r["flagged"]}

    def after_rejection(self, device_id: str) -> None:
        self._check([device_id])

    def after_version(self, version: int, devices: list[str],
                      clipping: Clipping | None) -> None:
        clipped = set(clipping.norms) if clipping is not None else set()
        if clipping is not None and clipped:
            self.store.add_clipping(version, clipping.norms, clipping.bound, clipping.median)
        # Only a bad outcome can flag a device, and only a good one clear a flag: the
        # rest of the cohort needs no query.
        self._check(sorted(clipped | (set(devices) & self.flagged)))

    def _check(self, devices: list[str]) -> None:
        for device in sorted(set(devices)):
            for row in device_anomalies(self.store, self.config, device):
                if not row["flagged"]:
                    self.flagged.discard(device)
                elif device not in self.flagged:
                    self.flagged.add(device)
                    log.warning("aggregator: device %s flagged: %d rejected and %d clipped "
                                "of its last %d updates (last rejection: %s)", device,
                                row["rejected"], row["clipped"], row["recent"],
                                row["last_rejection"] or "none")
