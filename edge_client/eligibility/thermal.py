"""Is the device cool enough? Training heats a fanless board; a hot Pi throttles anyway.

Reads /sys/class/thermal/thermal_zone*/temp (millidegrees C) and judges the hottest zone.
"""

from __future__ import annotations

import os

from edge_client.eligibility.probe import ProbeResult, Threshold, list_dir, read_float, read_text


class ThermalProbe:
    """Hottest thermal zone at most `max_temp_c`.

    No zones at all (many VMs, some boards) passes: there is nothing to protect. Zones
    that exist but cannot be read (a sensor that is switched off) are skipped; if none can
    be read the check fails, since the board has sensors and none answers.
    """

    name = "thermal"

    def __init__(self, sys_root: str = "/sys", max_temp_c: float = 70.0,
                 margin: float = 0.0) -> None:
        self.root = os.path.join(str(sys_root), "class", "thermal")
        self.limit = Threshold(max_temp_c, margin)

    def check(self, now: float) -> ProbeResult:
        names = list_dir(self.root)
        if names is None:
            return ProbeResult(False, f"temperature unknown: cannot list {self.root}")
        zones = [n for n in names if n.startswith("thermal_zone")]
        if not zones:
            return ProbeResult(True, facts={"thermal": "no thermal zones"})
        hottest = _hottest(self.root, zones)
        if hottest is None:
            return ProbeResult(False, "temperature unknown: no readable thermal zone")
        temp, zone = hottest
        facts: dict[str, float | str | bool] = {"temp_c": temp, "hottest_zone": zone}
        limit = self.limit.effective
        if not self.limit.passes(temp):
            return ProbeResult(False, f"too hot {temp:.1f}C > {limit:.1f}C", facts)
        return ProbeResult(True, facts=facts)


def _hottest(root: str, zones: list[str]) -> tuple[float, str] | None:
    """(degrees C, "thermal_zone0 (cpu-thermal)") of the hottest readable zone."""
    best: tuple[float, str] | None = None
    for zone in zones:
        milli = read_float(os.path.join(root, zone, "temp"))
        if milli is None:
            continue
        temp = round(milli / 1000.0, 1)
        if best is None or temp > best[0]:
            kind = read_text(os.path.join(root, zone, "type"))
            best = (temp, f"{zone} ({kind})" if kind else zone)
    return best
