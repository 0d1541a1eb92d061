"""The stages of a model version and the records of who moved it (docs/lifecycle.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Stage(Enum):
    CANDIDATE = "candidate"  # made by training; not served
    CANARY = "canary"  # under evaluation by the canary devices; not served
    PRODUCTION = "production"  # what devices serve
    ROLLED_BACK = "rolled_back"  # refused (by the rule or an operator); never served again
    RETIRED = "retired"  # was production, or a candidate passed over; kept for the record


class Command(Enum):
    """What an operator may ask (CLI, REST API, dashboard)."""

    PROMOTE = "promote"  # serve version N now
    ROLLBACK = "rollback"  # serve version N again (`rollback --to N`)
    PIN = "pin"  # serve version N and promote nothing automatically until the next promote


@dataclass(frozen=True)
class StageChange:
    """One line of the audit trail."""

    at: float
    version: int
    before: Stage | None
    after: Stage
    actor: str  # "rule", "operator:<who>", "migration", "rollout off"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "version": self.version,
                "from": None if self.before is None else self.before.value,
                "to": self.after.value, "actor": self.actor, "reason": self.reason}


@dataclass(frozen=True)
class StageRequest:
    """An operator's command, queued in the store until the service applies it."""

    id: int
    command: Command
    version: int
    actor: str
    at: float
