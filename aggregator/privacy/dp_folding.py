"""The DP wrappers' running sums: each device's update is clipped as it is folded, so a
private round keeps one float64 vector of the model's size and a few numbers per device
(its norm), never the updates (aggregator/strategy/folding.py).

A device with two updates in one aggregation (async mode: a stale and a fresh one) is
clipped on the sum of the two, as the batch path did, so that its whole say stays within
C. The sum cannot be unpicked once folded, so the first repeat raises `DeviceRepeated`
and the round is folded again from the store with those devices named up front: their
updates are then summed apart (one vector each, until the version) and clipped at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from aggregator.strategy.folding import Arrival, FlatUpdate
from edge_client.shared.protocol import Weights

log = logging.getLogger(__name__)


class DeviceRepeated(Exception):
    """A device sent a second update into a sum that clips per device: fold again with
    it in `repeated`."""

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.device_id = device_id


class ClippedSum:
    """Central DP: the sum of the devices' staleness-scaled updates, each device clipped
    to L2 norm `clip`; its norm before clipping is kept for the version's info."""

    def __init__(self, size: int, clip: float, repeated: frozenset[str],
                 apply: Callable[[Weights, ClippedSum, float], Weights]) -> None:
        if not (np.isfinite(clip) and clip > 0):
            raise ValueError(f"the clip bound must be a finite number > 0, not {clip}")
        self.size = size
        self.clip = float(clip)
        self.repeated = repeated
        self.apply = apply
        self.total = np.zeros(size, np.float64)
        self.norms: dict[str, float] = {}  # device -> norm before clipping
        self.held: dict[str, np.ndarray] = {}  # repeated devices' sums, clipped at the end
        self.folded = 0
        self.invalid = False

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        if not update.finite():
            log.warning("strategy: dropped 1 update(s) with NaN or inf values: %s",
                        arrival.device_id)
            return
        factor = arrival.staleness_factor
        if not (np.isfinite(factor) and 0 <= factor <= 1):
            self.invalid = True
            return
        device = arrival.device_id
        self.folded += 1
        if device in self.repeated:
            row = self.held.setdefault(device, np.zeros(self.size, np.float64))
            update.add_into(row, factor)
            return
        if device in self.norms:
            raise DeviceRepeated(device)
        norm = update.norm() * factor
        self.norms[device] = norm
        scale = self.clip / norm if norm > self.clip else 1.0
        update.add_into(self.total, factor * scale)

    def close(self) -> None:
        """Clip and add the repeated devices' sums (in device order); ValueError if the
        round has nothing to aggregate."""
        if self.invalid:
            raise ValueError("staleness factors must be in [0, 1] under DP")
        if self.folded == 0:
            raise ValueError("no contribution has finite values")
        for device in sorted(self.held):
            row = self.held.pop(device)
            norm = float(np.linalg.norm(row))
            self.norms[device] = norm
            self.total += row * (self.clip / norm if norm > self.clip else 1.0)

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        self.close()
        return self.apply(global_weights, self, server_lr)


class PlainSum:
    """Distributed DP: the plain sum of the devices' (already clipped and noised)
    updates, one per device."""

    def __init__(self, size: int,
                 apply: Callable[[Weights, np.ndarray, int, float], Weights]) -> None:
        self.apply = apply
        self.total = np.zeros(size, np.float64)
        self.devices: set[str] = set()
        self.folded = 0

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        if not update.finite():
            log.warning("strategy: dropped 1 update(s) with NaN or inf values: %s",
                        arrival.device_id)
            return
        self.folded += 1
        self.devices.add(arrival.device_id)
        update.add_into(self.total, 1.0)

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        if self.folded == 0:
            raise ValueError("no contribution has finite values")
        if len(self.devices) != self.folded:
            raise ValueError("distributed DP takes one update per device per version")
        return self.apply(global_weights, self.total, len(self.devices), server_lr)
