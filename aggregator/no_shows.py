"""No-shows: devices that say they are available but send nothing when invited.

A device invited to a sync round that sends no update before the round ends (closes or
aborts), not even one that is refused, and did not say meanwhile that it became
unavailable, did not show up. After `max_no_shows` such rounds in a row it is benched:
not invited again until it sends an update that is stored, or a status that arrives once
`backoff_s` has passed (then it gets one more chance). So a fake "online, eligible"
status costs the federation a bounded number of invitations, however long it stays
retained on the broker.

Memory is bounded: at most MAX_TRACKED devices per table, the oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edge_client.shared.protocol import Task

MAX_TRACKED = 100_000  # entries per table; a forgotten device simply starts afresh


@dataclass(frozen=True)
class RoundEnd:
    """What one round's end decided."""

    missed: tuple[str, ...] = ()  # invited, sent nothing, never said it went away
    benched: tuple[str, ...] = ()  # of those, benched now


class NoShows:
    """Counts consecutive no-shows per device; sans-IO (times are passed in)."""

    def __init__(self, max_no_shows: int, backoff_s: float) -> None:
        self.max_no_shows = max_no_shows
        self.backoff_s = backoff_s
        self._counts: OrderedDict[str, int] = OrderedDict()  # 0 < count < max_no_shows
        self._benched: OrderedDict[str, float] = OrderedDict()  # device -> backoff ends
        self._round: str | None = None
        self._invited: frozenset[str] = frozenset()
        self._heard: set[str] = set()
        self._excused: set[str] = set()

    def round_opened(self, task: Task) -> None:
        """Start watching a sync round's invitees (async tasks invite everyone: no-op)."""
        self._heard, self._excused = set(), set()
        expected = task.expected()
        if task.mode != "sync" or expected is None:
            self._round, self._invited = None, frozenset()
            return
        self._round, self._invited = task.task_id, frozenset(expected)

    def heard(self, device: str, task_id: str) -> None:
        """The device sent an update that was stored: it is back to a clean record."""
        self._counts.pop(device, None)
        self._benched.pop(device, None)
        if task_id == self._round:
            self._heard.add(device)

    def showed_up(self, device: str) -> None:
        """It sent something during the round, even if refused: not a no-show (it is not
        silent; anomaly flags deal with devices whose updates keep being refused)."""
        if device in self._invited:
            self._heard.add(device)

    def went_away(self, device: str) -> None:
        """It said it is offline or not eligible: a reason not to come, not a no-show."""
        if device in self._invited:
            self._excused.add(device)

    def round_ended(self, task_id: str, now: float) -> RoundEnd:
        """Count the invitees that did not show up; bench those at the limit."""
        if task_id != self._round:
            return RoundEnd()
        missed = sorted(self._invited - self._heard - self._excused)
        benched = []
        for device in missed:
            count = self._counts.pop(device, 0) + 1
            if count >= self.max_no_shows:
                _put(self._benched, device, now + self.backoff_s)
                benched.append(device)
            else:
                _put(self._counts, device, count)
        self._round, self._invited = None, frozenset()
        return RoundEnd(tuple(missed), tuple(benched))

    def is_benched(self, device: str) -> bool:
        return device in self._benched

    def may_return(self, device: str, now: float) -> bool:
        """Whether a status from `device` at `now` lets it be invited again: always,
        unless it is benched and its backoff has not passed yet."""
        until = self._benched.get(device)
        if until is None:
            return True
        if now < until:
            return False
        del self._benched[device]
        if self.max_no_shows > 1:  # one more no-show benches it again
            _put(self._counts, device, self.max_no_shows - 1)
        return True

    @property
    def benched(self) -> list[str]:
        return sorted(self._benched)


def _put(table: OrderedDict, key: str, value: object) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)
