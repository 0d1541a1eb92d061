"""When the device looks again: the periodic eligibility re-check, and the sleep until
the aggregator's next check-in. Plain numbers; the monotonic time is passed in."""

from __future__ import annotations


class Pace:
    def __init__(self, check_every_s: float) -> None:
        self.check_every_s = check_every_s
        self.next_check = 0.0  # the first tick checks
        self.sleep_until: float | None = None

    @property
    def sleeping(self) -> bool:
        return self.sleep_until is not None

    def check_due(self, now: float) -> bool:
        """Whether a re-check is due now; if so the next one is scheduled."""
        if now < self.next_check:
            return False
        self.next_check = now + self.check_every_s
        return True

    def sleep(self, now: float, seconds: float) -> float:
        self.sleep_until = now + seconds
        return self.sleep_until

    def wake_due(self, now: float) -> bool:
        """True once, at the first `now` past the sleep's end."""
        if self.sleep_until is None or now < self.sleep_until:
            return False
        self.sleep_until = None
        return True

    def poll_timeout(self, now: float, resend_due: float | None) -> float:
        """How long the shell may wait for a message before the next tick matters (at
        most 0.5 s, so re-checks stay on time)."""
        if self.sleep_until is not None:
            return max(0.01, min(0.5, self.sleep_until - now))
        return 0.5 if resend_due is None else min(0.5, max(0.01, resend_due - now))
