"""What a probe is: one question about the device, answered from files the kernel keeps.

Probes are plain objects with a `name` and a `check(now)` method, so a device app can add
its own (a door sensor, a UPS daemon) without inheriting from anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Fact = float | str | bool


@dataclass(frozen=True)
class ProbeResult:
    """One probe's answer: ok or not, a short human reason, and the numbers behind it."""

    ok: bool
    reason: str = ""
    facts: dict[str, Fact] = field(default_factory=dict)


@runtime_checkable
class Probe(Protocol):
    """Anything with a name and a check; `now` is Unix time in seconds (time.time())."""

    name: str

    def check(self, now: float) -> ProbeResult: ...


@dataclass
class Threshold:
    """A limit that, once crossed, must be beaten by `margin` before it clears.

    Without the margin a battery hovering at 20% or a CPU at 70 C would stop and start
    training every few seconds. `upper` limits (temperature, CPU) pass at or below the
    limit; lower limits (battery) pass at or above it.
    """

    limit: float
    margin: float = 0.0
    upper: bool = True
    tripped: bool = False

    @property
    def effective(self) -> float:
        """The limit in force now: shifted by the margin while tripped."""
        if not self.tripped:
            return self.limit
        return self.limit - self.margin if self.upper else self.limit + self.margin

    def passes(self, value: float) -> bool:
        """Judge `value` and remember whether it tripped."""
        limit = self.effective
        ok = value <= limit if self.upper else value >= limit
        self.tripped = not ok
        return ok


def read_text(path: str) -> str | None:
    """A small kernel file's stripped text; None when missing or unreadable.

    sysfs reads fail in more ways than missing files (EIO, ENODATA from a sleeping
    sensor), so every OSError means "no answer" and the caller decides what that implies.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def read_float(path: str) -> float | None:
    """A number from a kernel file, or None when missing, unreadable or not a number."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def list_dir(path: str) -> list[str] | None:
    """Sorted entries of a folder; [] when it does not exist, None when unreadable."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError:
        return None
