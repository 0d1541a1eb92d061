"""Device profiles: virtual devices whose power, load and network follow schedules.

The simulator does not fake eligibility decisions. It writes a minimal /sys and /proc
per device (FakeDeviceTree) and the real probes in edge_client.eligibility read them, so
a simulated fleet exercises exactly the code a Raspberry Pi runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Protocol

import numpy as np

from edge_client.eligibility import EligibilityConfig, EligibilityPolicy
from edge_client.eligibility.idle import CLOCK_TICKS

ROUTE_HEADER = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\t"
                "Window\tIRTT")


class FakeDeviceTree:
    """A minimal fake /sys and /proc under `root`, written the way the kernel lays them out."""

    def __init__(self, root: Path, cpus: int = 4) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self._busy = [0] * cpus  # cumulative ticks per CPU
        self._idle = [0] * cpus
        self._written: dict[Path, tuple[str, int]] = {}  # text and bytes on disk
        for folder in ("class/power_supply", "class/thermal", "class/net/lo"):
            (self.sys_root / folder).mkdir(parents=True, exist_ok=True)
        (self.proc_root / "net").mkdir(parents=True, exist_ok=True)
        (self.proc_root / "self").mkdir(exist_ok=True)
        self._write(self.proc_root / "self" / "stat", "1 (fedge sim) S" + " 0" * 20 + "\n")
        self.set_cpu_busy(0.0)
        self.set_network(None)

    @property
    def sys_root(self) -> Path:
        return self.root / "sys"

    @property
    def proc_root(self) -> Path:
        return self.root / "proc"

    def set_power(self, *, battery_pct: float | None, charging: bool,
                  mains_online: bool) -> None:
        """A Mains supply and, unless `battery_pct` is None (a mains Pi), a battery BAT0."""
        supplies = self.sys_root / "class" / "power_supply"
        self._write(supplies / "AC" / "type", "Mains\n")
        self._write(supplies / "AC" / "online", "1\n" if mains_online else "0\n")
        battery = supplies / "BAT0"
        if battery_pct is None:
            for name in ("type", "present", "status", "capacity"):
                (battery / name).unlink(missing_ok=True)
                self._written.pop(battery / name, None)
            if battery.exists():
                battery.rmdir()
            return
        pct = round(min(100.0, max(0.0, battery_pct)))
        status = ("Full" if pct >= 100 else "Charging") if charging else "Discharging"
        for name, value in (("type", "Battery"), ("present", "1"), ("status", status),
                            ("capacity", str(pct))):
            self._write(battery / name, value + "\n")

    def set_cpu_busy(self, busy_pct: float) -> None:
        """One second of CPU time at `busy_pct`, so the NEXT CpuIdleProbe check sees it."""
        busy = round(CLOCK_TICKS * min(100.0, max(0.0, busy_pct)) / 100)
        for cpu in range(self.cpus):
            self._busy[cpu] += busy
            self._idle[cpu] += CLOCK_TICKS - busy
        self._write_stat()
        load = self.cpus * busy_pct / 100
        self._write(self.proc_root / "loadavg", f"{load:.2f} {load:.2f} {load:.2f} 1/120 4242\n")

    def set_network(self, iface: str | None) -> None:
        """A default route via `iface` ("wlan0", "wwan0"...), or no route at all."""
        lines = [ROUTE_HEADER]
        if iface is not None:
            lines.append(f"{iface}\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0")
            lines.append(f"{iface}\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0")
            devtype = "wwan" if iface.startswith("ww") else "wlan" if iface.startswith("wl") \
                else ""
            uevent = f"INTERFACE={iface}\nIFINDEX=3\n" + (f"DEVTYPE={devtype}\n" if devtype
                                                           else "")
            self._write(self.sys_root / "class" / "net" / iface / "uevent", uevent)
        self._write(self.proc_root / "net" / "route", "\n".join(lines) + "\n")

    def set_temperature(self, celsius: float) -> None:
        zone = self.sys_root / "class" / "thermal" / "thermal_zone0"
        self._write(zone / "type", "cpu-thermal\n")
        self._write(zone / "temp", f"{round(celsius * 1000)}\n")

    def _write(self, path: Path, text: str) -> None:
        """Overwrite in place, padded with spaces to the old length, never truncated.

        Rename-over and truncate-to-zero make ext4 flush the data (auto_da_alloc), about
        1 ms per file; this is ~20 us. A probe on another thread never sees a leftover
        tail (it strips the spaces) or a missing file, only, in theory, a torn single
        write, which it would report as unknown for one check.
        """
        old = self._written.get(path)
        if old is not None and old[0] == text:
            return
        data = text.encode()
        flags = os.O_WRONLY | os.O_CREAT
        if old is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_TRUNC  # first write: whatever was there may be longer
        else:
            data = data.ljust(old[1])
        fd = os.open(path, flags, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        self._written[path] = (text, len(data))

    def _write_stat(self) -> None:
        def line(name: str, busy: int, idle: int) -> str:
            return f"{name} {busy} 0 0 {idle} 0 0 0 0 0 0"

        rows = [line("cpu ", sum(self._busy), sum(self._idle))]
        rows += [line(f"cpu{i}", self._busy[i], self._idle[i]) for i in range(self.cpus)]
        self._write(self.proc_root / "stat", "\n".join([*rows, "intr 0", "ctxt 0", ""]))




@dataclass(frozen=True)
class DeviceState:
    """What one virtual device is doing at one moment; battery None means no battery."""

    charging: bool
    battery_pct: float | None
    busy_pct: float
    iface: str | None
    temp_c: float


class Profile(Protocol):
    """How a fleet's devices behave over simulated time `t` (seconds)."""

    def state_at(self, t: float, device_index: int) -> DeviceState: ...

    def speed_factor(self, device_index: int) -> float: ...


def apply(tree: FakeDeviceTree, state: DeviceState) -> None:
    """Write `state` into the device's fake tree (the CPU part takes effect at the next check)."""
    tree.set_power(battery_pct=state.battery_pct, charging=state.charging,
                   mains_online=state.charging)
    tree.set_cpu_busy(state.busy_pct)
    tree.set_network(state.iface)
    tree.set_temperature(state.temp_c)


def policy_for(tree: FakeDeviceTree,
               config: EligibilityConfig | None = None) -> EligibilityPolicy:
    """The standard policy, reading this device's fake tree instead of the real one."""
    config = dataclasses.replace(config or EligibilityConfig(), sys_root=str(tree.sys_root),
                                 proc_root=str(tree.proc_root))
    return EligibilityPolicy.from_config(config)


@dataclass(frozen=True)
class AlwaysOn:
    """Mains-powered, idle, on Wi-Fi, cool: every device is always eligible."""

    seed: int = 0

    def state_at(self, t: float, device_index: int) -> DeviceState:
        return DeviceState(charging=True, battery_pct=None, busy_pct=5.0, iface="wlan0",
                           temp_c=45.0)

    def speed_factor(self, device_index: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Diurnal:
    """Phones-on-a-nightstand days, compressed to `period_s` simulated seconds.

    Each device charges for `charge_fraction` of its day, starting at its own phase, and
    is in use (busy, unplugged) the rest of the day. The day is cut into `slots` in which
    seeded draws unplug the charger, wake the owner, or drop Wi-Fi to wwan0 or no route.
    Every draw is a pure function of (seed, device, day), so results never depend on the
    order of queries. Devices also differ in speed: 0.25 to 1.0 of the fastest.
    """

    period_s: float = 20.0
    seed: int = 0
    charge_fraction: float = 0.45
    slots: int = 48
    unplug_prob: float = 0.04
    wake_prob: float = 0.05
    metered_prob: float = 0.05
    offline_prob: float = 0.03

    def state_at(self, t: float, device_index: int) -> DeviceState:
        phase, _speed, low = self._device(device_index)
        day_float = t / self.period_s + phase
        day = math.floor(day_float)
        x = day_float - day  # position in this device's day, 0..1; charger from 0
        slot = min(int(x * self.slots), self.slots - 1)
        unplug, wake, net, heat = (float(v) for v in self._draws(device_index, day)[:, slot])
        on_charger = x < self.charge_fraction
        charging = on_charger and unplug >= self.unplug_prob
        busy = (70.0 + 25 * heat if wake < self.wake_prob else 3.0 + 7 * heat) if on_charger \
            else 40.0 + 50 * heat
        return DeviceState(charging=charging, battery_pct=self._battery(x, low),
                           busy_pct=round(busy, 1), iface=self._iface(net),
                           temp_c=round(40.0 + 0.25 * busy + 5 * heat, 1))

    def speed_factor(self, device_index: int) -> float:
        return self._device(device_index)[1]

    def _device(self, device_index: int) -> tuple[float, float, float]:
        """(phase 0..1, speed 0.25..1, lowest battery % of the day) for one device."""
        phase, speed, low = np.random.default_rng([self.seed, device_index]).random(3)
        return float(phase), float(2 ** (-2 * speed)), 10.0 + 20.0 * float(low)

    def _draws(self, device_index: int, day: int) -> np.ndarray:
        """4 x slots uniforms: unplug, wake, network, heat."""
        key = [self.seed, device_index, 1 + day % 2**32]
        return np.random.default_rng(key).random((4, self.slots))

    def _battery(self, x: float, low: float) -> float:
        """Charges from `low` to full in the first 60% of the charger window, then drains."""
        c = self.charge_fraction
        if x < c:
            return round(min(100.0, low + (100.0 - low) * x / (0.6 * c)), 1)
        return round(100.0 - (100.0 - low) * (x - c) / (1.0 - c), 1)

    def _iface(self, draw: float) -> str | None:
        if draw < self.offline_prob:
            return None
        return "wwan0" if draw < self.offline_prob + self.metered_prob else "wlan0"


@dataclass(frozen=True)
class Stragglers(AlwaysOn):
    """Always eligible, but slow at log-normal rates (`fedge demo --stragglers`).

    Device i's slowdown is the log-normal (sigma) quantile at its seeded rank's place,
    (rank + 0.5) / devices, scaled so the fastest is 1x: with sigma 0.9 and 5 devices the
    slowest is 10x slower than the fastest, the median 3.2x.
    """

    devices: int = 5
    sigma: float = 0.9

    def speed_factor(self, device_index: int) -> float:
        return 1.0 / self.slowdown(device_index)

    def slowdown(self, device_index: int) -> float:
        ranks = np.random.default_rng(self.seed).permutation(self.devices)
        quantiles = [(r + 0.5) / self.devices for r in range(self.devices)]
        z = [NormalDist().inv_cdf(q) for q in quantiles]
        return math.exp(self.sigma * (z[int(ranks[device_index % self.devices])] - z[0]))


PROFILES: dict[str, Callable[..., Profile]] = {"always": AlwaysOn, "diurnal": Diurnal,
                                               "stragglers": Stragglers}


def profile_by_name(name: str, seed: int = 0) -> Profile:
    """A profile from its name in PROFILES ("always", "diurnal")."""
    try:
        factory = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None
    return factory(seed=seed)
