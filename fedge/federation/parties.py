"""One party of a federation (the aggregator, a device, a helper) on its own thread.

Every party in fedge has the same shape, `run(stop: threading.Event)`: it runs until it
is done or the event is set. A PartyThread gives such a party a thread and a stop event
of its own, and keeps what it raised, so that the caller's thread can report it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Run = Callable[[threading.Event], None]


class PartyFailed(RuntimeError):
    """A party's run() raised; the original exception is the cause."""

    def __init__(self, name: str, error: BaseException) -> None:
        super().__init__(f"{name} failed: {error!r}")
        self.party = name
        self.error = error


class PartyThread:
    """Runs `target(stop)` on a daemon thread named `name`; `join` re-raises its error.

    `on_error`, if given, is called on the party's thread with what it raised: a
    federation uses it to stop every other party at the first failure.
    """

    def __init__(self, target: Run, name: str,
                 on_error: Callable[[PartyThread, BaseException], None] | None = None,
                 start: bool = True) -> None:
        self.name = name
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._target = target
        self._on_error = on_error
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        if start:
            self.thread.start()

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self._target(self.stop)
        except BaseException as exc:  # reported by join, in the caller's thread
            self.error = exc
            if self._on_error is not None:
                self._on_error(self, exc)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` for the party to end; True if it has. Raises nothing."""
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait for the party to end; raise what it raised, or TimeoutError if it runs on."""
        self.wait(timeout)
        if self.error is not None:
            raise self.error
        if self.thread.is_alive():
            raise TimeoutError(f"{self.name} still running after {timeout:g} s")

    def halt(self, timeout: float = 10) -> None:
        """Ask the party to stop, then join it."""
        self.stop.set()
        self.join(timeout)
