"""Who may be invited: device statuses, bounded, and weighed by each device's record.

Anyone who can publish a status can claim any device id is "online, eligible" (in plain
mode nothing checks who sent it). So:

- A device with a track record (an update stored, in this run or an earlier one) is
  "proven". Others are "newcomers": at most `max_newcomers` of them are tracked at once
  (the oldest unavailable or benched one makes room; else a new one is not taken), and
  only those get a row in the devices table. Rows of devices that never sent an update are dropped
  at start: the retained statuses of those still around bring them back.
- Invitations are topped up with proven devices (SyncRounds.plan), so newcomers that do
  not show up cannot hold a round while enough proven devices are available.
- No-shows are counted (aggregator/no_shows.py). A benched newcomer stays tracked (it may
  still send a late update) but is the first to make room; if its backoff passes without
  an update or a fresh status, it is dropped, its row deleted and its retained status
  cleared from the broker (the service does that), so it does not come back at every
  start.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from aggregator.no_shows import NoShows
from aggregator.store import Store
from edge_client.shared.protocol import Status, Task

log = logging.getLogger(__name__)
LOGGED_IDS = 5  # device ids named in one log line; the rest are counted


@dataclass
class PresenceConfig:
    """The [presence] table: how fake or silent devices are kept from holding rounds."""

    max_no_shows: int = 2  # invited this many rounds in a row without an update: benched
    no_show_backoff_s: float = 300.0  # a benched device's status counts again after this
    max_newcomers: int = 1000  # devices without a stored update tracked at once
    write_every_s: float = 1.0  # statuses are kept in memory and written to the store
    #                with the next group commit that stores an update, or after this long

    def __post_init__(self) -> None:
        if not 0 < self.write_every_s <= 3600:
            raise ValueError(f"presence.write_every_s must be > 0 and <= 3600, "
                             f"not {self.write_every_s}")
        if self.max_no_shows < 1:
            raise ValueError(f"presence.max_no_shows must be >= 1, not {self.max_no_shows}")
        if not self.no_show_backoff_s >= 0:
            raise ValueError(f"presence.no_show_backoff_s must be >= 0, "
                             f"not {self.no_show_backoff_s}")
        if self.max_newcomers < 1:
            raise ValueError(f"presence.max_newcomers must be >= 1, not {self.max_newcomers}")


class Taken(Enum):
    """What became of one status."""

    TRACKED = "tracked"  # its device's availability and row were updated
    FULL = "full"  # a newcomer, but max_newcomers are tracked already, none of them idle
    BENCHED = "benched"  # a benched newcomer still in its backoff


class Presence:
    """Availability of devices, owned by the service loop."""

    def __init__(self, config: PresenceConfig, store: Store) -> None:
        self.config = config
        self.store = store
        dropped = store.forget_unproven_devices()
        if dropped:
            log.info("aggregator: dropped %d device rows without any stored update (their "
                     "retained statuses bring back those still there)", dropped)
        self.proven: set[str] = set(store.proven_devices())
        self.available: set[str] = set()  # online and eligible, by their last status
        self._newcomers: dict[str, None] = {}  # tracked newcomers, in arrival order
        self._idle: OrderedDict[str, None] = OrderedDict()  # of those, unavailable or benched
        self._benched: OrderedDict[str, float] = OrderedDict()  # newcomers: backoff ends
        self.no_shows = NoShows(config.max_no_shows, config.no_show_backoff_s)
        self._skipped: tuple[str, ...] = ()  # benched devices left out, as last logged
        self._turned_away = 0  # newcomer statuses not taken since the list was last full
        self._unwritten: dict[str, tuple[Status, float | None]] = {}  # soft state, below
        self._unwritten_since: float | None = None  # monotonic time of the oldest of them

    # ------------------------------------------------------------ statuses
    def on_status(self, status: Status, now: float, wall: float | None = None) -> Taken:
        """Take a checked status at monotonic time `now` (unix time `wall`, if known)."""
        device = status.device_id
        up = status.online and status.eligible
        returning = self.no_shows.may_return(device, now) if up else True
        if device not in self.proven and device not in self._newcomers:
            if not returning:
                return Taken.BENCHED
            if not self._make_room():
                self._turn_away(device)
                return Taken.FULL
            self._newcomers[device] = None
            self._turned_away = 0
        if up:
            self.available.add(device)
            if returning:
                self._idle.pop(device, None)
                self._benched.pop(device, None)
        else:
            self.available.discard(device)
            self.no_shows.went_away(device)
            if device in self._newcomers:
                self._idle[device] = None
                self._idle.move_to_end(device)
        self._unwritten[device] = (status, wall)
        if self._unwritten_since is None:
            self._unwritten_since = now
        return Taken.TRACKED

    # ------------------------------------------------------------ soft state
    # Statuses are soft state: the decisions above read memory, and the store's devices
    # table (what `fedge status` and the dashboard show) trails it. One fsync'd commit per
    # status was most of the loop's time at 3,000 devices, so they are written in one go,
    # with a group commit that stores an update (it pays the fsync anyway) or once
    # `write_every_s` has passed since the oldest unwritten one (without an fsync).
    def write_due(self, now: float) -> bool:
        """Whether unwritten statuses have waited `write_every_s` at monotonic `now`."""
        since = self._unwritten_since
        return since is not None and now - since >= self.config.write_every_s

    def write(self) -> int:
        """Write the unwritten statuses to the store in one go; how many."""
        if not self._unwritten:
            return 0
        now = time.time()
        rows = [(s, now if at is None else at) for s, at in self._unwritten.values()]
        self.store.set_devices(rows)
        self._unwritten.clear()
        self._unwritten_since = None
        return len(rows)

    def _make_room(self) -> bool:
        if len(self._newcomers) < self.config.max_newcomers:
            return True
        if not self._idle:
            return False
        oldest, _ = self._idle.popitem(last=False)
        self._forget(oldest)
        return True

    def _turn_away(self, device: str) -> None:
        """Logged (INFO) once each time the list fills up, not once per status."""
        self._turned_away += 1
        if self._turned_away == 1:
            log.info("aggregator: not taking the status of %s, nor of other new devices "
                     "until there is room: %d devices without a stored update are tracked "
                     "already, none of them offline or benched ([presence] max_newcomers)",
                     device, len(self._newcomers))

    def _forget(self, device: str) -> None:
        self._newcomers.pop(device, None)
        self._idle.pop(device, None)
        self._benched.pop(device, None)
        self.available.discard(device)
        self._unwritten.pop(device, None)
        self.store.forget_device(device)

    # ------------------------------------------------------------ rounds
    def candidates(self) -> list[str]:
        """Available devices that are not benched; logs (INFO) when benched ones are
        left out, each time that set changes."""
        skipped = tuple(sorted(d for d in self.available if self.no_shows.is_benched(d)))
        if skipped != self._skipped:
            self._skipped = skipped
            if skipped:
                log.info("aggregator: not inviting %d benched device(s) (%s): invited %d "
                         "round(s) in a row without sending an update; each is invited again "
                         "after an update, or a status %.0f s after it was benched",
                         len(skipped), _some(skipped), self.config.max_no_shows,
                         self.config.no_show_backoff_s)
        return sorted(d for d in self.available if not self.no_shows.is_benched(d))

    def round_opened(self, task: Task) -> None:
        self.no_shows.round_opened(task)
        invited = task.expected()
        if task.mode != "sync" or not invited:
            return
        newcomers = [d for d in invited if d not in self.proven]
        if newcomers and len(newcomers) < len(invited):
            log.info("aggregator: round %d invites %d device(s) with a track record and %d "
                     "newcomer(s) on trial (%s)", task.round,
                     len(invited) - len(newcomers), len(newcomers), _some(newcomers))

    def sent_something(self, device: str) -> None:
        """A whole update came from `device` (perhaps to be refused): it showed up."""
        self.no_shows.showed_up(device)

    def update_seen(self, device: str, task_id: str) -> None:
        """An update from `device` was stored: it has a track record now."""
        self.no_shows.heard(device, task_id)
        self.proven.add(device)
        self._newcomers.pop(device, None)
        self._idle.pop(device, None)
        self._benched.pop(device, None)

    def round_ended(self, task_id: str, now: float) -> list[str]:
        """Count no-shows of the round that ended (at monotonic `now`); returns the
        newcomers dropped because their backoff passed with no sign of life, whose
        retained statuses the caller clears from the broker."""
        end = self.no_shows.round_ended(task_id, now)
        if end.missed:
            log.info("aggregator: %d invited device(s) sent no update for %s (%s)%s",
                     len(end.missed), task_id, _some(end.missed),
                     f"; benched {len(end.benched)} ({_some(end.benched)})"
                     if end.benched else "")
        for device in end.benched:
            if device in self._newcomers:
                self._idle[device] = None  # the first to make room
                self._benched[device] = now + self.config.no_show_backoff_s
        dropped = []
        while self._benched and next(iter(self._benched.values())) <= now:
            device, _ = self._benched.popitem(last=False)
            if self.no_shows.is_benched(device):
                self._forget(device)
                dropped.append(device)
        return dropped


def _some(devices: Iterable[str]) -> str:
    ids = list(devices)
    more = len(ids) - LOGGED_IDS
    return ", ".join(ids[:LOGGED_IDS]) + (f" and {more} more" if more > 0 else "")
