"""The async concurrency bound: at most `[async] concurrency` devices train at a time.

FedBuff (Nguyen et al. 2022) keeps C clients training and samples a new one each time
an update arrives. fedge's async task is retained and read by every device, so here the
bound works through the task's cohort (edge_client/shared/protocol/cohort.py): each
version's task draws as many idle devices as there is room under C, and while the task
is open its cutoff moves on down the same ranking as updates free places (at most once
a second: each widening re-publishes the task to the fleet). A device is in flight from
its invitation until an update from it is judged, it stops being available, or its
invitation is older than `max_staleness` versions (its update would be refused anyway).

With C devices in flight and a version every K (buffer_size) updates, an update is about
C / K versions old when it arrives: `max_staleness` should be about twice that
(`staleness_advice`), so that at fleet size almost no work is thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from aggregator.config import AsyncConfig
from edge_client.shared.protocol.cohort import Cohort, rank

REINVITE_S = 1.0  # widen an open task at most this often


def typical_staleness(cfg: AsyncConfig) -> int:
    """Versions made while one invited device trains, with C in flight: about C / K."""
    return math.ceil(cfg.concurrency / cfg.buffer_size) if cfg.concurrency else 0


def staleness_advice(cfg: AsyncConfig) -> str | None:
    """A one-line warning when max_staleness would refuse much of the bound's own work."""
    typical = typical_staleness(cfg)
    if typical and cfg.max_staleness < 2 * typical:
        return (f"[async] max_staleness = {cfg.max_staleness} is below twice the staleness "
                f"that concurrency = {cfg.concurrency} with buffer_size = {cfg.buffer_size} "
                f"makes typical (about {typical}): slower devices' updates will be refused "
                f"as stale; set max_staleness >= {2 * typical} or lower concurrency")
    return None


class InFlight:
    """Which devices hold an invitation they have not answered; sans-IO."""

    def __init__(self, cfg: AsyncConfig) -> None:
        self.cfg = cfg
        self._since: dict[str, int] = {}  # device -> the model version it was invited at
        self._widened_at: float | None = None

    def __len__(self) -> int:
        return len(self._since)

    @property
    def room(self) -> int:
        return max(0, self.cfg.concurrency - len(self._since))

    def refresh(self, version: int, available: Collection[str]) -> None:
        """Forget invitations too old to be accepted, and devices no longer available."""
        oldest = version - self.cfg.max_staleness
        self._since = {d: v for d, v in self._since.items() if v >= oldest and d in available}

    def idle(self, candidates: Collection[str]) -> list[str]:
        return [d for d in candidates if d not in self._since]

    def invited(self, devices: Collection[str], version: int, now: float) -> None:
        for device in devices:
            self._since[device] = version
        self._widened_at = now

    def answered(self, device: str) -> None:
        """An update from `device` was judged: its place is free, whatever the verdict."""
        self._since.pop(device, None)

    def may_widen(self, now: float) -> bool:
        return (self.cfg.concurrency > 0 and self.room > 0
                and (self._widened_at is None or now - self._widened_at >= REINVITE_S))

    def widen(self, cohort: Cohort, idle: Collection[str]) -> tuple[Cohort, list[str]]:
        """The cohort admitting up to `room` more of the `idle` devices it leaves out,
        the next in its ranking, and those devices; the cutoff only grows, so every
        device already invited stays invited."""
        outside = sorted((rank(cohort.seed, d), d) for d in idle if not cohort.includes(d))
        added = outside[:self.room]
        if not added:
            return cohort, []
        cutoff = added[-1][0] + 1  # never EVERYONE: devices that come later wait their turn
        widened = Cohort(cohort.seed, cutoff, cohort.size + len(added),
                         max(cohort.candidates, len(idle) + len(self._since)))
        return widened, [d for _, d in added]
