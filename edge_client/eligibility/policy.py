"""Combine the probes into one decision: stop at once, resume only after things settle."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_client.eligibility.idle import CpuIdleProbe
from edge_client.eligibility.network import NetworkProbe, nm_metered_via_nmcli
from edge_client.eligibility.power import PowerProbe
from edge_client.eligibility.probe import Fact, Probe, ProbeResult
from edge_client.eligibility.schedule import TimeWindowProbe, parse_window
from edge_client.eligibility.thermal import ThermalProbe


@dataclass
class EligibilityConfig:
    """The device TOML's [eligibility] table; see docs/eligibility.md for each key."""

    enabled: bool = True
    require_charging: bool = True
    min_battery_pct: float = 20.0
    max_cpu_busy_pct: float = 30.0
    max_load_per_cpu: float | None = None
    allow_metered: bool = False
    metered_interfaces: list[str] = field(default_factory=list)
    networkmanager: bool = False
    max_temp_c: float = 70.0
    windows: list[str] = field(default_factory=list)
    hold_s: float = 60.0
    margin_pct: float = 5.0
    sys_root: str = "/sys"
    proc_root: str = "/proc"

    def __post_init__(self) -> None:
        _require(0 <= self.min_battery_pct <= 100, "min_battery_pct must be 0 to 100")
        _require(0 < self.max_cpu_busy_pct <= 100, "max_cpu_busy_pct must be above 0, at most 100")
        _require(self.max_load_per_cpu is None or self.max_load_per_cpu > 0,
                 "max_load_per_cpu must be > 0")
        _require(self.hold_s >= 0 and self.margin_pct >= 0, "hold_s and margin_pct must be >= 0")
        _require(all(isinstance(i, str) and i for i in self.metered_interfaces),
                 "metered_interfaces must be interface names")
        for window in self.windows:
            parse_window(window)  # raises ValueError naming the bad string


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Decision:
    """May the device train now? `reasons` is empty when it may."""

    eligible: bool
    reasons: tuple[str, ...]
    facts: dict[str, Fact]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class EligibilityPolicy:
    """All probes ok, with hysteresis.

    Going ineligible is immediate, so the client stops at the next batch boundary.
    Becoming eligible again needs every probe ok continuously for `hold_s`; the very
    first check decides directly, as there is no flapping to damp yet. `now` is Unix
    time; if it steps backwards (a clock fix), the hold restarts.
    """

    def __init__(self, probes: Sequence[Probe], hold_s: float = 60.0) -> None:
        self.probes = list(probes)
        self.hold_s = hold_s
        self._was_eligible: bool | None = None
        self._ok_since: float | None = None

    @classmethod
    def from_config(cls, config: EligibilityConfig, app_busy: Callable[[], bool] | None = None,
                    extra_probes: Sequence[Probe] = ()) -> EligibilityPolicy:
        """The standard probes for `config`; `enabled = false` turns every check off."""
        if not config.enabled:
            return cls([], hold_s=0.0)
        return cls([*standard_probes(config, app_busy), *extra_probes], hold_s=config.hold_s)

    def check(self, now: float) -> Decision:
        results = [run_probe(probe, now) for probe in self.probes]
        facts: dict[str, Fact] = {}
        for result in results:
            facts.update(result.facts)
        reasons = tuple(r.reason for r in results if not r.ok)
        if reasons:
            self._was_eligible, self._ok_since = False, None
            return Decision(False, reasons, facts)
        if self._was_eligible is False:
            held = self._held_for(now)
            if held < self.hold_s:
                facts["hold_left_s"] = round(self.hold_s - held, 1)
                return Decision(False, (f"holding: ok for {held:.1f}s of {self.hold_s:g}s",),
                                facts)
        self._was_eligible, self._ok_since = True, None
        return Decision(True, (), facts)

    def _held_for(self, now: float) -> float:
        if self._ok_since is None or now < self._ok_since:
            self._ok_since = now
        return now - self._ok_since


def standard_probes(config: EligibilityConfig,
                    app_busy: Callable[[], bool] | None = None) -> list[Probe]:
    """Power, idle, network, thermal, and a schedule when `windows` is set."""
    margin = config.margin_pct
    probes: list[Probe] = [
        PowerProbe(os.path.join(config.sys_root, "class", "power_supply"),
                   config.require_charging, config.min_battery_pct, margin),
        CpuIdleProbe(config.proc_root, config.max_cpu_busy_pct, config.max_load_per_cpu,
                     app_busy, margin),
        NetworkProbe(config.proc_root, config.sys_root, config.metered_interfaces,
                     config.allow_metered,
                     nm_metered_via_nmcli if config.networkmanager else None),
        ThermalProbe(config.sys_root, config.max_temp_c, margin),
    ]
    if config.windows:
        probes.append(TimeWindowProbe(config.windows))
    return probes


def run_probe(probe: Probe, now: float) -> ProbeResult:
    """A probe's result; a probe that raises (or returns junk) fails instead of crashing."""
    name = getattr(probe, "name", type(probe).__name__)
    try:
        result = probe.check(now)
        if not isinstance(result, ProbeResult):
            raise TypeError(f"check() returned {type(result).__name__}, not ProbeResult")
    except Exception as exc:
        return ProbeResult(False, f"{name} failed: {exc}")
    if not result.ok and not result.reason:
        return ProbeResult(False, f"{name} not ok", result.facts)
    return result
