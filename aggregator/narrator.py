"""What the aggregator says at INFO: one line per event that matters (a round opened, a
version made) and, while nothing progresses, a line every so often that says what it
waits for and why ("round 3: 0 of 5 online devices eligible: 5 cpu busy").

The service calls it at the points where it decides; the narrator only formats and
rate-limits, and reads the store's device table only when it is about to say something.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aggregator.store import Store
from edge_client.shared.protocol import Status, Task
from edge_client.shared.protocol.reasons import reason_kind

log = logging.getLogger("aggregator.service")
DEFAULT_INTERVAL_S = 30.0
LOOK_S = 1.0  # while waiting, look at most this often whether the situation changed
LISTED_DEVICES = 5  # device ids named in one line; the rest are counted
TWIN_WINDOW_S = 120.0  # a session coming back within this long: two clients, one id
TWIN_REPEAT_S = 600.0  # the warning for one device id, at most this often
WATCHED_SESSIONS = 10_000  # devices whose sessions are remembered (oldest forgotten)


class Waiting(Enum):
    """Why the service is not making progress right now."""

    BROKER = "the broker"
    SETTLING = "device statuses"
    PAUSED = "the operator"
    DEVICES = "devices"
    UPDATES = "updates"
    UPPER = "the upper tier"
    CANARY = "canary reports"


@dataclass(frozen=True)
class Fleet:
    """Devices as the store knows them: who is online, who may train, why not."""

    known: int
    online: int
    eligible: int
    not_eligible: Counter

    @classmethod
    def of(cls, store: Store) -> Fleet:
        rows = store.devices()
        online = [d for d in rows if d["online"]]
        idle = Counter(reason_kind(d["reason"]) or "unknown" for d in online
                       if not d["eligible"])
        return cls(len(rows), len(online), sum(1 for d in online if d["eligible"]), idle)

    def why_not(self) -> str:
        """'9 known: 2 offline, 3 not eligible (2 cpu busy, 1 battery)'."""
        parts = [f"{self.known - self.online} offline"]
        if self.not_eligible:
            reasons = ", ".join(f"{n} {why}" for why, n in self.not_eligible.most_common())
            parts.append(f"{sum(self.not_eligible.values())} not eligible ({reasons})")
        return f"{self.known} known: " + ", ".join(parts)


class Narrator:
    def __init__(self, store: Store, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.interval_s = interval_s
        self.clock = clock  # monotonic: how often to speak
        self.wall = wall  # the time deadlines are in
        self._waiting: Waiting | None = None
        self._said_at = 0.0
        self._looked_at = 0.0
        self._key: object = None

    # ------------------------------------------------------------ events
    def round_opened(self, task: Task, available: int) -> None:
        self._waiting = None
        fleet = Fleet.of(self.store)
        count = task.invited_count()
        invited = (f"invited {count} of {available} available"
                   if count is not None else f"open to all {available} available")
        deadline = (f"; deadline {task.deadline - self.wall():.0f} s"
                    if task.deadline is not None else "")
        log.info("aggregator: round %d opened (task %s, from version %d): %s; %s%s",
                 task.round, task.task_id, task.model_version, invited, fleet.why_not(),
                 deadline)

    def version_made(self, version: int, info: dict[str, Any]) -> None:
        self._waiting = None
        accuracy = (f"; accuracy {info['accuracy']:.4f}" if isinstance(
            info.get("accuracy"), float) else "")
        log.info("aggregator: version %d made from %d updates of round %d in %.2f s%s; "
                 "model %d bytes, delta %d bytes", version, info.get("updates", 0),
                 info.get("round", 0), info.get("round_wall_s", 0.0), accuracy,
                 info.get("model_bytes", 0), info.get("delta_bytes", 0))

    # ------------------------------------------------------------ waiting
    def waiting(self, kind: Waiting, describe: Callable[[], tuple[object, str]]) -> None:
        """Called on every tick that makes no progress. `describe()` gives a key and a
        line; the line is said when the kind of wait or its key changes (looked at once a
        second at most), and again every `interval_s` while it lasts."""
        now = self.clock()
        same = kind == self._waiting
        if same and now - self._looked_at < LOOK_S:
            return
        self._looked_at = now
        key, text = describe()
        if same and key == self._key and now - self._said_at < self.interval_s:
            return
        self._waiting, self._key, self._said_at = kind, key, now
        log.info("aggregator: waiting for %s: %s", kind.value, text)

    def for_devices(self, round_no: int, available: int,
                    needed: int) -> tuple[object, str]:
        fleet = Fleet.of(self.store)
        return ((available, fleet), f"round {round_no} needs {needed} available (online and "
                f"eligible) devices, {available} are; {fleet.why_not()}")

    def for_updates(self, task: Task, pending: list[str], target: int) -> tuple[object, str]:
        """How far the open round is, and what the invited devices that sent nothing last
        said about themselves (offline, or not eligible and why)."""
        missing = sorted(set(task.expected() or ()) - set(pending))
        states = {d["device_id"]: d for d in self.store.devices()} if missing else {}
        described = [f"{m} ({_state(states.get(m))})" for m in missing[:LISTED_DEVICES]]
        more = (f" and {len(missing) - LISTED_DEVICES} more"
                if len(missing) > LISTED_DEVICES else "")
        deadline = (f"deadline in {task.deadline - self.wall():.0f} s"
                    if task.deadline is not None else "no deadline")
        silent = f"; not heard from: {', '.join(described)}{more}" if missing else ""
        key = (task.task_id, len(pending), tuple(described))
        return key, (f"round {task.round} has {len(pending)} of {target} updates; "
                     f"{deadline}{silent}")


def _state(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no status"
    if not row["online"]:
        return "offline"
    return "eligible" if row["eligible"] else f"not eligible: {reason_kind(row['reason'])}"


class TwinWatch:
    """Two clients with one device id take turns on the broker (each connection takes
    the other's over), so that device's statuses alternate between two sessions:
    A, B, A within a short time. A restart shows as A, B and stays at B."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._warned: dict[str, float] = {}

    def status(self, status: Status) -> None:
        if not status.session:
            return  # an older device: no session to compare
        device, now = status.device_id, self.clock()
        last, before, switched_at = self._seen.pop(device, (status.session, "", 0.0))
        if status.session != last:
            if status.session == before and now - switched_at < TWIN_WINDOW_S:
                self._warn(device, last, status.session, now)
            before, last, switched_at = last, status.session, now
        self._seen[device] = (last, before, switched_at)
        if len(self._seen) > WATCHED_SESSIONS:
            self._seen.popitem(last=False)

    def _warn(self, device: str, one: str, other: str, now: float) -> None:
        if now - self._warned.get(device, -TWIN_REPEAT_S) < TWIN_REPEAT_S:
            return
        self._warned[device] = now
        log.warning("aggregator: two clients are using device id %r (sessions %s and %s take "
                    "turns on the broker): device ids must be unique; each knocks the other "
                    "off at every connect", device, one, other)
