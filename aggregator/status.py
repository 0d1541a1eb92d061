"""The federation at a glance, read from the aggregator's store: what `fedge status` and
`GET /api/status` show. Only reads, so it works beside a running service (SQLite WAL
lets readers in while the service writes)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from aggregator.store import Store
from aggregator.tier_view import tier_line
from edge_client.shared.protocol.reasons import reason_kind

RECENT_REJECTIONS = 5
FINISHED_NOTE = "finished"  # set by the service when it publishes its final task
BROKER_NOTE = "broker"  # {"connected": bool, "since": unix time, "reason": str}
HEARTBEAT_NOTE = "heartbeat"  # unix time the service loop last said it runs
HEARTBEAT_S = 10.0  # how often the service writes it
STALE_HEARTBEAT_S = 3 * HEARTBEAT_S  # older than this: the service loop is not running


@dataclass(frozen=True)
class RoundProgress:
    """The open task: how far its round has come and what it waits for."""

    task_id: str
    round: int
    mode: str
    model_version: int
    invited: int | None  # None: every device may take part (async)
    updates: int  # stored for this task so far
    opened_s_ago: float
    deadline_in_s: float | None  # negative once passed


@dataclass(frozen=True)
class DeviceLine:
    device_id: str
    online: bool | None  # None: never sent a status, only updates
    eligible: bool | None
    reason: str
    model_version: int | None
    last_seen_s_ago: float | None


@dataclass(frozen=True)
class Rejection:
    device_id: str
    reason: str
    s_ago: float


@dataclass(frozen=True)
class FleetStatus:
    model_version: int | None
    versions: int
    accuracy: float | None
    last_version_s_ago: float | None
    round: RoundProgress | None
    devices: list[DeviceLine]
    not_eligible: dict[str, int]  # online devices that may not train now, by reason
    rejections_total: int
    recent_rejections: list[Rejection]
    stopped: str | None  # why training ended before its rounds (e.g. a privacy budget)
    finished: bool  # a final "done" task was published
    broker: dict[str, Any] | None  # the service's link: connected or not, since when, why
    tier: str | None = None  # where it sits in a tree of aggregators (docs/tiers.md)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetStatus:
        """What /api/status answered (to_json's output), back as a FleetStatus."""
        try:
            return cls(**{**data,
                          "round": RoundProgress(**data["round"]) if data["round"] else None,
                          "devices": [DeviceLine(**d) for d in data["devices"]],
                          "recent_rejections": [Rejection(**r)
                                                for r in data["recent_rejections"]]})
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not a fedge status: {exc}") from None


def fleet_status(store: Store, now: float | None = None) -> FleetStatus:
    now = time.time() if now is None else now
    history = store.model_history()
    latest = history[-1] if history else None
    evaluated = [h for h in history if h.accuracy is not None]
    devices = [DeviceLine(d["device_id"], bool(d["online"]), bool(d["eligible"]), d["reason"],
                          d["model_version"], _ago(now, d["last_seen"]))
               for d in store.devices()]
    not_eligible = Counter(reason_kind(d.reason) or "unknown" for d in devices
                           if d.online and not d.eligible)
    rows = store.db.execute("SELECT at, device_id, reason FROM rejections "
                            "ORDER BY at DESC LIMIT ?", (RECENT_REJECTIONS,)).fetchall()
    total = store.db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
    return FleetStatus(
        model_version=latest.version if latest else None,
        versions=sum(1 for h in history if h.version > 0),
        accuracy=evaluated[-1].accuracy if evaluated else None,
        last_version_s_ago=_ago(now, latest.created_at) if latest else None,
        round=_round(store, now),
        devices=devices,
        not_eligible=dict(not_eligible.most_common()),
        rejections_total=int(total),
        recent_rejections=[Rejection(device, reason, now - at) for at, device, reason in rows],
        stopped=store.note("stopped"),
        finished=bool(store.note(FINISHED_NOTE)),
        broker=store.note(BROKER_NOTE),
        tier=tier_line(store),
    )


def _round(store: Store, now: float) -> RoundProgress | None:
    opened = store.open_task()
    if opened is None:
        return None
    task, opened_at = opened
    updates = store.db.execute("SELECT COUNT(*) FROM updates WHERE task_id=?",
                               (task.task_id,)).fetchone()[0]
    return RoundProgress(
        task_id=task.task_id, round=task.round, mode=task.mode,
        model_version=task.model_version,
        invited=task.invited_count(),
        updates=int(updates), opened_s_ago=now - opened_at,
        deadline_in_s=task.deadline - now if task.deadline is not None else None)


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else max(0.0, now - at)


@dataclass(frozen=True)
class Health:
    """For probes: is the service loop running and connected to its broker?"""

    ok: bool
    problem: str | None
    broker_connected: bool | None
    heartbeat_age_s: float | None
    model_version: int | None
    training_finished: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def service_health(store: Store, now: float | None = None) -> Health:
    now = time.time() if now is None else now
    beat = store.note(HEARTBEAT_NOTE)
    age = None if beat is None else max(0.0, now - float(beat))
    broker = store.note(BROKER_NOTE)
    connected = None if broker is None else bool(broker["connected"])
    problem = None
    if age is None or age > STALE_HEARTBEAT_S:
        problem = ("the service loop has not run yet" if age is None
                   else f"the service loop last ran {age:.0f} s ago")
    elif not connected:
        reason = broker["reason"] if broker else "unknown"
        problem = f"not connected to the broker ({reason})"
    latest = store.latest_model()
    return Health(ok=problem is None, problem=problem, broker_connected=connected,
                  heartbeat_age_s=age, model_version=latest.version if latest else None,
                  training_finished=bool(store.note(FINISHED_NOTE)))
