"""Only train during set hours of local time, e.g. at night when nobody uses the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from edge_client.eligibility.probe import ProbeResult

DAY_MIN = 24 * 60


@dataclass(frozen=True)
class Window:
    """[start, end) in minutes after midnight; end < start wraps past midnight."""

    start: int
    end: int
    text: str

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def parse_window(text: str) -> Window:
    """'HH:MM-HH:MM' (24:00 allowed as an end) to a Window; ValueError naming the string."""
    if not isinstance(text, str):
        raise ValueError(f"time window {text!r} must be a string like '01:00-05:00'")
    start_text, sep, end_text = text.strip().partition("-")
    start, end = _minute(start_text), _minute(end_text)
    if not sep or start is None or end is None or start >= DAY_MIN:
        raise ValueError(f"time window {text!r} is not 'HH:MM-HH:MM' (e.g. '01:00-05:00')")
    if start == end:
        raise ValueError(f"time window {text!r} is empty; use '00:00-24:00' for all day")
    return Window(start, end, f"{start_text.strip()}-{end_text.strip()}")


def _minute(text: str) -> int | None:
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or len(hours) > 2 or len(minutes) != 2 \
            or not minutes.isdigit():
        return None
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        return None
    return h * 60 + m


class TimeWindowProbe:
    """Local time inside one of `windows`; `tz` is a tzinfo, an IANA name, or None (local)."""

    name = "schedule"

    def __init__(self, windows: Sequence[str] = ("01:00-05:00",),
                 tz: tzinfo | str | None = None) -> None:
        if isinstance(windows, str):
            windows = [windows]  # one string is one window, not a list of characters
        self.windows = tuple(parse_window(w) for w in windows)
        if not self.windows:
            raise ValueError("TimeWindowProbe needs at least one window")
        self.tz = _zone(tz) if isinstance(tz, str) else tz

    def check(self, now: float) -> ProbeResult:
        local = datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        facts: dict[str, float | str | bool] = {"local_time": local.strftime("%H:%M")}
        if any(w.contains(minute) for w in self.windows):
            return ProbeResult(True, facts=facts)
        return ProbeResult(False, "outside " + ", ".join(w.text for w in self.windows), facts)


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo  # only devices that name a zone pay for the import

    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
