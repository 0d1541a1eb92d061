"""Group commit: how many received messages the service handles in one transaction.

The loop takes what has arrived, one message at a time, and handles each inside one
SQLite transaction (`Store.group`); it stops taking when nothing more is waiting, when
`batch_messages` were taken, or when `batch_ms` have passed since the first, then
commits once (one fsync) and only then publishes the batch's acks. A lone update is
never held back waiting for company: the batch ends as soon as the queue is empty, and
the time bound caps what a burst adds to the first message's ack. Measured gains and
the trade-off: docs/gateway.md#ingest-at-fleet-rates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class IngestConfig:
    """The [ingest] table."""

    batch_messages: int = 1000  # received messages handled in one group commit, at most
    batch_ms: float = 5.0  # ... and for at most this long after the first, in ms
    workers: int = 1  # processes that verify and decode updates (aggregator/ingest_workers.py);
    #                   1: the service loop does it itself

    def __post_init__(self) -> None:
        most = max_workers()
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not (
                1 <= self.workers <= most):
            raise ValueError(f"ingest.workers must be a whole number from 1 to {most} "
                             f"(4 x this machine's {os.cpu_count() or 1} CPUs), "
                             f"not {self.workers!r}")
        if not 1 <= self.batch_messages <= 100_000:
            raise ValueError(f"ingest.batch_messages must be between 1 and 100000, "
                             f"not {self.batch_messages}")
        if not 0 < self.batch_ms <= 1000:
            raise ValueError(f"ingest.batch_ms must be > 0 and <= 1000, not {self.batch_ms}")


def max_workers() -> int:
    """More ingest workers than 4 per CPU only add processes that wait."""
    return 4 * (os.cpu_count() or 1)


class BatchBounds:
    """Counts one batch's messages and time; `full()` says when to stop taking more."""

    def __init__(self, config: IngestConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.taken = 0
        self._started = 0.0

    def start(self) -> None:
        self.taken = 0
        self._started = self.clock()

    def took(self) -> None:
        self.taken += 1

    def full(self) -> bool:
        """Enough for one commit: the message bound reached, or the time bound passed."""
        if self.taken >= self.config.batch_messages:
            return True
        return (self.clock() - self._started) * 1000.0 >= self.config.batch_ms
