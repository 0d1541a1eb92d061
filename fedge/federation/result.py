"""What a finished in-process federation reports: its versions, accuracy and bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.service import Aggregator
from edge_client.client import ClientStats, EdgeClient
from edge_client.shared.protocol import Weights


@dataclass(frozen=True)
class FederationResult:
    """The aggregator's record of each model version and the devices' own counters.

    `history` holds the aggregator's record of every version after the initial one
    (accuracy, updates, update_bytes, round_wall_s, and more by feature), oldest first.
    `device_stats` maps each device id to its ClientStats; `bytes_up` and `bytes_down`
    sum the MQTT payload bytes the devices sent and received.
    """

    history: list[dict[str, Any]]  # each version's record in its JSON form (VersionRecord.to_json)
    version: int
    global_weights: Weights
    device_stats: dict[str, ClientStats]
    wall_s: float

    @property
    def final_accuracy(self) -> float | None:
        """The last version's test accuracy, or None without versions or an evaluator."""
        accuracy = self.history[-1].get("accuracy") if self.history else None
        return float(accuracy) if accuracy is not None else None

    @property
    def accuracy_per_version(self) -> list[float]:
        return [float(h["accuracy"]) for h in self.history if "accuracy" in h]

    @property
    def bytes_up(self) -> int:
        return sum(s.bytes_up for s in self.device_stats.values())

    @property
    def bytes_down(self) -> int:
        return sum(s.bytes_down for s in self.device_stats.values())

    @property
    def parameters(self) -> int:
        return int(sum(w.size for w in self.global_weights.values()))


def collect(aggregator: Aggregator, devices: Sequence[EdgeClient],
            wall_s: float) -> FederationResult:
    """Read the results off the parties once every thread has ended."""
    return FederationResult(
        history=[h.to_json() for h in aggregator.history if h.version > 0],
        version=aggregator.version, global_weights=aggregator.global_weights,
        device_stats={d.config.device_id: d.stats for d in devices}, wall_s=wall_s)
