"""One scripted clock for sans-IO tests: both clocks of a shell (wall and monotonic),
moved only by the test, read as each side's `Instant`."""

from __future__ import annotations

from aggregator.core import Instant as CoreInstant
from edge_client.session import Instant as DeviceInstant


class ScriptedClock:
    """Wall (Unix) and monotonic seconds that advance together, only when told."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 500.0) -> None:
        self.wall, self.mono = wall, mono

    def at(self) -> CoreInstant:
        """Now, as the aggregator core takes it."""
        return CoreInstant(self.wall, self.mono)

    def device_now(self) -> DeviceInstant:
        """Now, as a device session takes it."""
        return DeviceInstant(self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
