"""The named states that cross the wire or sit in the store, as Enums.

Each member is the very string sent or stored ("accepted", "pending", ...): a
`WireEnum` is a `str`, compares equal to its string and formats as it, so messages,
SQL rows, JSON and log lines read exactly as they did with bare strings.
"""

from __future__ import annotations

from enum import Enum


class WireEnum(str, Enum):
    """A str Enum that prints as its value (Python 3.10 has no StrEnum)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class AckStatus(WireEnum):
    """The aggregator's answer to an update. Every status is final: stored (accepted,
    duplicate, late) or refused (rejected), the device drops the update from its outbox."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    REJECTED = "rejected"


class RoundMode(WireEnum):
    """How the aggregator runs rounds: a task per round with a deadline, or buffered."""

    SYNC = "sync"
    ASYNC = "async"


ACK_STATUSES = tuple(s.value for s in AckStatus)
