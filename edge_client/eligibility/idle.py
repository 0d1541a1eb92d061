"""Is the device otherwise idle? CPU use of everything but fedge, load, and the app's say.

Reads /proc/stat (the `cpu` line, and `cpuN` lines to count CPUs), /proc/loadavg and
/proc/self/stat. Utilisation is the change in the `cpu` counters between two checks, minus
this process's own CPU time: without that, training would see its own load and stop itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from edge_client.eligibility.probe import ProbeResult, Threshold, read_text

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # USER_HZ: the unit of /proc/stat, 100 on Linux


@dataclass(frozen=True)
class CpuSample:
    """Counters in clock ticks: all CPUs together, and this process alone."""

    total: int
    busy: int
    own: int
    cpus: int


class CpuIdleProbe:
    """Others' CPU use at most `max_busy_pct`, optional load cap, and the app not busy.

    The first check measures from the sample taken at construction. Windows shorter than
    `min_window_s` reuse the last measurement (a 10 ms window is 0% or 100% noise), and a
    first check with no ticks elapsed at all passes with `cpu_measured` False: the next
    check, one batch later, measures properly.
    """

    name = "idle"

    def __init__(self, proc_root: str = "/proc", max_busy_pct: float = 30.0,
                 max_load_per_cpu: float | None = None,
                 app_busy: Callable[[], bool] | None = None, margin: float = 0.0,
                 min_window_s: float = 0.5) -> None:
        self.proc_root = str(proc_root)
        self.busy = Threshold(max_busy_pct, margin)
        self.max_load_per_cpu = max_load_per_cpu
        self.app_busy = app_busy
        self.min_window_s = min_window_s
        self._last = read_cpu_sample(self.proc_root)
        self._busy_pct: float | None = None

    def check(self, now: float) -> ProbeResult:
        if self.app_busy is not None and self.app_busy():
            return ProbeResult(False, "app busy", {"app_busy": True})
        sample = read_cpu_sample(self.proc_root)
        if sample is None:
            return ProbeResult(False, f"cpu state unknown: cannot read {self.proc_root}/stat")
        busy_pct = self._measure(sample)
        facts: dict[str, float | str | bool] = {"cpus": sample.cpus,
                                                 "cpu_measured": busy_pct is not None}
        if self.app_busy is not None:
            facts["app_busy"] = False
        load = self._load_result(sample.cpus, facts)
        if busy_pct is not None:
            facts["cpu_busy_pct"] = busy_pct
            limit = self.busy.effective
            if not self.busy.passes(busy_pct):
                return ProbeResult(False, f"cpu busy {busy_pct:.0f}% > {limit:g}%", facts)
        return load

    def _measure(self, sample: CpuSample) -> float | None:
        """Busy percent since the last kept sample, or the previous value for short windows."""
        last = self._last
        if last is None:  # /proc/stat was unreadable at construction
            self._last = sample
            return self._busy_pct
        total = sample.total - last.total
        min_ticks = self.min_window_s * CLOCK_TICKS * sample.cpus
        if total < min_ticks and (self._busy_pct is not None or total <= 0):
            return self._busy_pct
        others = sample.busy - last.busy - (sample.own - last.own)
        self._busy_pct = round(max(0.0, min(100.0, 100.0 * others / total)), 1)
        self._last = sample
        return self._busy_pct

    def _load_result(self, cpus: int, facts: dict[str, float | str | bool]) -> ProbeResult:
        """Report the 1-minute load; judge it only when a cap is set."""
        text = read_text(os.path.join(self.proc_root, "loadavg"))
        try:
            load = float(text.split()[0]) if text else None
        except ValueError:
            load = None
        if load is not None:
            facts["load1"] = load
        cap = self.max_load_per_cpu
        if cap is None:
            return ProbeResult(True, facts=facts)
        if load is None:
            return ProbeResult(False, f"load unknown: cannot read {self.proc_root}/loadavg",
                               facts)
        if load / cpus > cap:
            return ProbeResult(False, f"load {load / cpus:.2f} per cpu > {cap:.2f}", facts)
        return ProbeResult(True, facts=facts)


def read_cpu_sample(proc_root: str) -> CpuSample | None:
    """Counters from <proc_root>/stat and <proc_root>/self/stat; None when stat is unusable."""
    text = read_text(os.path.join(proc_root, "stat"))
    if text is None:
        return None
    totals, cpus = None, 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            totals = _parse_cpu_line(line)
        elif line.startswith("cpu") and line[3:4].isdigit():
            cpus += 1
    if totals is None:
        return None
    return CpuSample(totals[0], totals[1], _own_ticks(proc_root), max(cpus, 1))


def _parse_cpu_line(line: str) -> tuple[int, int] | None:
    """(total, busy) ticks; steal and guest time are left out (guest is inside user)."""
    try:
        values = [int(v) for v in line.split()[1:8]]
    except ValueError:
        return None
    if len(values) < 4:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return total, total - idle


def _own_ticks(proc_root: str) -> int:
    """utime + stime of this process (all its threads); 0 when unreadable."""
    text = read_text(os.path.join(proc_root, "self", "stat"))
    if not text or ")" not in text:
        return 0
    fields = text.rsplit(")", 1)[1].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return 0
