"""Which tasks this device has answered and which it sat out.

"Task done" is decided here only (`mark_done`): a done task is never trained for again,
not even after a reboot (the list is saved; the outbox names the rest).
"""

from __future__ import annotations

from collections.abc import Iterable


class TaskBook:
    def __init__(self) -> None:
        self._done: list[str] = []
        self._skipped: set[str] = set()  # one skip reason counted per device-round

    def resume(self, done: Iterable[str]) -> None:
        """The list read back from disk at start."""
        self._done = list(done)

    def mark_done(self, task_id: str) -> None:
        if task_id not in self._done:
            self._done.append(task_id)

    def is_done(self, task_id: str) -> bool:
        return task_id in self._done

    def forget(self) -> None:
        """The federation started over: its task ids mean nothing any more."""
        self._done = []

    def first_skip(self, task_id: str) -> bool:
        """Whether this is the first time this task is sat out (then it is counted)."""
        if task_id in self._skipped:
            return False
        self._skipped.add(task_id)
        return True

    @property
    def done(self) -> tuple[str, ...]:
        return tuple(self._done)
