"""What code outside the service loop reads of a running `Aggregator`.

Threads other than the loop (the demo, benchmarks, tests waiting for a version, the
dashboard's admin actions) read the latest `ServiceSnapshot`, replaced whole by the
loop after every change, so `version`, `history` and `global_weights` always belong
together. The loop's parts (`strategy`, `participation`, `secure`, ...) are for code
in the loop's thread or after `run` returned.
"""

from __future__ import annotations

from typing import Any

from aggregator.core import AggregatorCore, ServiceSnapshot
from aggregator.core.secure_driver import SecureRound
from aggregator.participation import Participation
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.secure_round import SecureRounds
from aggregator.strategy import Strategy
from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Task, Weights


class ServiceReaders:
    core: AggregatorCore
    _snapshot: ServiceSnapshot

    @property
    def snapshot(self) -> ServiceSnapshot:
        return self._snapshot

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def history(self) -> list[VersionRecord]:
        """One row per version, as stored (a new list each time)."""
        return list(self._snapshot.history)

    @property
    def global_weights(self) -> Weights:
        return dict(self._snapshot.global_weights)

    @property
    def arch(self) -> dict[str, Any]:
        return dict(self._snapshot.arch)

    @property
    def task(self) -> Task | None:
        """The open task, if any."""
        return self._snapshot.task

    @property
    def paused(self) -> bool:
        return self._snapshot.paused

    @property
    def pending_count(self) -> int:
        """Stored updates waiting for the next aggregation."""
        return self._snapshot.pending

    @property
    def finished(self) -> bool:
        return self._snapshot.finished

    # ------------------------------------------------------------ the loop's parts
    @property
    def available(self) -> set[str]:
        """Devices online and eligible by their last status (aggregator/presence.py)."""
        return self.core.presence.available

    @available.setter
    def available(self, devices: set[str]) -> None:
        self.core.presence.available = set(devices)

    @property
    def strategy(self) -> Strategy:
        return self.core.versions.strategy

    @property
    def participation(self) -> Participation:
        return self.core.participation

    @property
    def privacy(self) -> ServicePrivacy:
        return self.core.privacy

    @property
    def secure(self) -> SecureRounds | None:
        """The secure rounds (audits read `last_result`), or None without secagg."""
        driver = self.core.driver
        return driver.rounds if isinstance(driver, SecureRound) else None
