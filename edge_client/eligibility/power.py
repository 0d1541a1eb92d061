"""Is the device on external power, and is its battery above the floor?

Reads /sys/class/power_supply/*/{type,online,status,capacity,scope,present}. A board
with no battery at all (a mains-powered Pi) counts as charging: it can never run flat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edge_client.eligibility.probe import ProbeResult, Threshold, list_dir, read_float, read_text

CHARGING_STATUSES = ("Charging", "Full")
DISCHARGING_STATUSES = ("Discharging", "Not charging")


@dataclass(frozen=True)
class Battery:
    name: str
    status: str | None
    capacity: float | None


@dataclass(frozen=True)
class PowerState:
    """What the supplies say; `problem` names the first file we needed and could not read."""

    external_online: bool
    batteries: tuple[Battery, ...]
    problem: str = ""


class PowerProbe:
    """Charging (or no battery) and battery at or above `min_battery_pct`.

    The floor applies while charging too: a Pi on a weak USB port can lose charge under
    training load. An unreadable battery level fails the check while a floor is set,
    because training drains a battery we cannot measure; set the floor to 0 to ignore it.
    """

    name = "power"

    def __init__(self, root: str = "/sys/class/power_supply", require_charging: bool = True,
                 min_battery_pct: float = 0.0, margin: float = 0.0) -> None:
        self.root = str(root)
        self.require_charging = require_charging
        self.floor = Threshold(min_battery_pct, margin, upper=False)

    def check(self, now: float) -> ProbeResult:
        state = read_power_state(self.root)
        if state.problem:
            return ProbeResult(False, f"power state unknown: {state.problem}")
        if not state.batteries:
            return ProbeResult(True, facts={"charging": True, "has_battery": False})
        return self._judge(state)

    def _judge(self, state: PowerState) -> ProbeResult:
        charging = state.external_online or any(
            b.status in CHARGING_STATUSES for b in state.batteries)
        facts: dict[str, float | str | bool] = {
            "has_battery": True, "external_power": state.external_online, "charging": charging}
        pct = _battery_pct(state.batteries)
        if pct is not None:
            facts["battery_pct"] = pct
        if self.require_charging and not charging:
            return ProbeResult(False, _not_charging_reason(state.batteries), facts)
        if self.floor.limit <= 0:
            return ProbeResult(True, facts=facts)
        if pct is None:
            missing = next(b.name for b in state.batteries if b.capacity is None)
            return ProbeResult(False, f"power state unknown: cannot read {missing}/capacity",
                               facts)
        limit = self.floor.effective
        if not self.floor.passes(pct):
            return ProbeResult(False, f"battery {pct:g}% < {limit:g}%", facts)
        return ProbeResult(True, facts=facts)


def read_power_state(root: str) -> PowerState:
    """Every supply under `root`; peripherals (scope Device) and empty bays are skipped."""
    names = list_dir(root)
    if names is None:
        return PowerState(False, (), f"cannot list {root}")
    external, batteries = False, []
    for name in names:
        path = os.path.join(root, name)
        if read_text(os.path.join(path, "scope")) == "Device":
            continue  # a wireless mouse's battery says nothing about this board
        kind = read_text(os.path.join(path, "type"))
        if kind is None:
            return PowerState(False, (), f"cannot read {name}/type")
        if kind != "Battery":
            external = external or read_text(os.path.join(path, "online")) == "1"
        elif read_text(os.path.join(path, "present")) != "0":
            batteries.append(Battery(name, read_text(os.path.join(path, "status")),
                                     _capacity(path)))
    return PowerState(external, tuple(batteries))


def _capacity(path: str) -> float | None:
    """Percent charge; from energy or charge counters when a driver has no `capacity`."""
    pct = read_float(os.path.join(path, "capacity"))
    if pct is not None:
        return max(0.0, min(100.0, pct))
    for now_name, full_name in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
        now = read_float(os.path.join(path, now_name))
        full = read_float(os.path.join(path, full_name))
        if now is not None and full:
            return round(max(0.0, min(100.0, 100.0 * now / full)), 1)
    return None


def _battery_pct(batteries: tuple[Battery, ...]) -> float | None:
    """The mean level (two laptop batteries drain one after the other); None if any unknown."""
    levels = [b.capacity for b in batteries]
    known = [level for level in levels if level is not None]
    if len(known) != len(levels):
        return None
    return round(sum(known) / len(known), 1)


def _not_charging_reason(batteries: tuple[Battery, ...]) -> str:
    """"on battery", unless a battery's status does not let us tell (unreadable, Unknown)."""
    for battery in batteries:
        if battery.status is None:
            return f"power state unknown: cannot read {battery.name}/status"
        if battery.status not in DISCHARGING_STATUSES:
            return f"power state unknown: {battery.name} status {battery.status!r}"
    return "on battery"
