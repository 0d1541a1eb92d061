"""The aggregator core's own state: the model, the open task, what waits for the next
version. Only the service loop's thread touches it; others read its snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aggregator.core.pending import PendingUpdates
from aggregator.core.snapshot import ServiceSnapshot, frozen_weights
from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Task, Weights


@dataclass
class CoreState:
    version: int
    weights: Weights  # replaced whole with each version, never changed in place
    arch: dict[str, Any]
    history: list[VersionRecord]
    rounds: int  # versions to make (0: no limit)
    task: Task | None = None
    task_opened: float = 0.0  # monotonic
    pending: PendingUpdates = field(default_factory=PendingUpdates)
    paused: bool = False
    stopped: str | None = None  # why training ended before `rounds`
    done_published: bool = False
    connected_at: float = 0.0  # monotonic
    link_problem: str = "connecting"  # why the link is down, for the waiting line
    heartbeat_at: float = 0.0

    @property
    def finished(self) -> bool:
        reached = self.rounds > 0 and self.version >= self.rounds
        return reached or self.stopped is not None

    def key(self) -> tuple[object, ...]:
        """Changes whenever what a snapshot shows does (cheap: taken after every event)."""
        return (self.version, self.task, len(self.pending), self.paused, self.stopped,
                self.finished)

    def snapshot(self) -> ServiceSnapshot:
        return ServiceSnapshot(version=self.version, global_weights=frozen_weights(self.weights),
                               arch=dict(self.arch), history=tuple(self.history),
                               task=self.task, pending=len(self.pending), paused=self.paused,
                               finished=self.finished, stopped=self.stopped)
