"""Each eligibility probe against hand-made fake /sys and /proc trees."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_client.eligibility import (
    CpuIdleProbe,
    NetworkProbe,
    PowerProbe,
    ThermalProbe,
    TimeWindowProbe,
)
from edge_client.eligibility.idle import CLOCK_TICKS
from edge_client.eligibility.network import nm_metered_via_nmcli, parse_nmcli_metered

NOW = 1_700_000_000.0


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def unreadable(root: Path, rel: str) -> None:
    """A directory where a file should be: reading it fails, even as root."""
    (root / rel).mkdir(parents=True)


# ---------------------------------------------------------------- power

def supply(root: Path, name: str, **files: str) -> None:
    for key, value in files.items():
        write(root, f"{name}/{key}", value)


def test_a_board_without_battery_counts_as_charging(tmp_path):
    result = PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW)
    assert result.ok and result.facts == {"charging": True, "has_battery": False}
    missing = PowerProbe(str(tmp_path / "nowhere"), min_battery_pct=20).check(NOW)
    assert missing.ok


def test_on_battery_is_not_ok(tmp_path):
    supply(tmp_path, "AC", type="Mains", online="0")
    supply(tmp_path, "BAT0", type="Battery", status="Discharging", capacity="54")
    result = PowerProbe(str(tmp_path)).check(NOW)
    assert not result.ok and result.reason == "on battery"
    assert result.facts["battery_pct"] == 54 and result.facts["charging"] is False
    assert PowerProbe(str(tmp_path), require_charging=False).check(NOW).ok


@pytest.mark.parametrize("kind", ["Mains", "USB", "USB_PD"])
def test_an_online_external_supply_is_charging(tmp_path, kind):
    supply(tmp_path, "ext", type=kind, online="1")
    supply(tmp_path, "BAT0", type="Battery", status="Not charging", capacity="80")
    result = PowerProbe(str(tmp_path)).check(NOW)
    assert result.ok and result.facts["charging"] is True
    assert result.facts["external_power"] is True


@pytest.mark.parametrize("status", ["Charging", "Full"])
def test_battery_status_charging_or_full_is_charging(tmp_path, status):
    supply(tmp_path, "BAT0", type="Battery", status=status, capacity="100")
    assert PowerProbe(str(tmp_path)).check(NOW).ok


def test_battery_floor_applies_even_while_charging(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity="18")
    result = PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW)
    assert not result.ok and result.reason == "battery 18% < 20%"


def test_battery_floor_has_a_resume_margin(tmp_path):
    probe = PowerProbe(str(tmp_path), min_battery_pct=20, margin=5)
    levels = {"19": False, "22": False, "25": True, "22.5": True, "19.5": False}
    for level, ok in levels.items():
        supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity=level)
        assert probe.check(NOW).ok is ok, level
    assert probe.check(NOW).reason == "battery 19.5% < 25%"


def test_peripheral_batteries_and_empty_bays_are_ignored(tmp_path):
    supply(tmp_path, "hid-mouse", type="Battery", scope="Device", status="Discharging",
           capacity="5")
    supply(tmp_path, "BAT1", type="Battery", present="0")
    result = PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW)
    assert result.ok and result.facts["has_battery"] is False


def test_two_batteries_average(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity="10")
    supply(tmp_path, "BAT1", type="Battery", status="Charging", capacity="40")
    assert PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW).facts["battery_pct"] == 25


def test_capacity_from_energy_counters(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", status="Charging", energy_now="15000000",
           energy_full="50000000")
    assert PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW).facts["battery_pct"] == 30


def test_unreadable_capacity_fails_only_when_a_floor_is_set(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", status="Charging")
    unreadable(tmp_path, "BAT0/capacity")
    result = PowerProbe(str(tmp_path), min_battery_pct=20).check(NOW)
    assert not result.ok
    assert result.reason == "power state unknown: cannot read BAT0/capacity"
    assert PowerProbe(str(tmp_path), min_battery_pct=0).check(NOW).ok


def test_unreadable_or_odd_status_on_battery_says_so(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", capacity="50")
    result = PowerProbe(str(tmp_path)).check(NOW)
    assert result.reason == "power state unknown: cannot read BAT0/status"
    write(tmp_path, "BAT0/status", "Unknown")
    assert PowerProbe(str(tmp_path)).check(NOW).reason == \
        "power state unknown: BAT0 status 'Unknown'"
    supply(tmp_path, "AC", type="Mains", online="1")  # mains answers the question
    assert PowerProbe(str(tmp_path)).check(NOW).ok


def test_unreadable_supply_type_is_unknown(tmp_path):
    unreadable(tmp_path, "weird/type")
    result = PowerProbe(str(tmp_path)).check(NOW)
    assert not result.ok and result.reason == "power state unknown: cannot read weird/type"


# ---------------------------------------------------------------- cpu and load

def stat(proc: Path, busy: int, idle: int, cpus: int = 2, own: int = 0) -> None:
    lines = [f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"]
    lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(cpus)]
    write(proc, "stat", "\n".join([*lines, "intr 1 2 3", "ctxt 42"]))
    write(proc, "self/stat", f"77 (python (x)) R 1 1 1 0 -1 0 0 0 0 0 {own} 0 0 0 20")
    write(proc, "loadavg", "0.50 0.40 0.30 1/100 123")


def second(cpus: int = 2) -> int:
    return CLOCK_TICKS * cpus  # one second of ticks over all CPUs


def test_cpu_busy_from_two_stat_samples(tmp_path):
    stat(tmp_path, busy=1000, idle=9000)
    probe = CpuIdleProbe(str(tmp_path), max_busy_pct=30)
    stat(tmp_path, busy=1000 + 73 * second() // 100, idle=9000 + 27 * second() // 100)
    result = probe.check(NOW)
    assert not result.ok and result.reason == "cpu busy 73% > 30%"
    assert result.facts["cpu_busy_pct"] == 73.0 and result.facts["cpus"] == 2
    stat(tmp_path, busy=1000 + 83 * second() // 100, idle=9000 + 117 * second() // 100)
    assert probe.check(NOW).facts["cpu_busy_pct"] == 10.0


def test_own_cpu_time_is_not_counted(tmp_path):
    """Training makes the CPU busy; the probe must not stop training because of itself."""
    stat(tmp_path, busy=0, idle=0, own=0)
    probe = CpuIdleProbe(str(tmp_path), max_busy_pct=30)
    stat(tmp_path, busy=second(), idle=second(), own=second() * 80 // 100)  # 40% of all
    result = probe.check(NOW)
    assert result.ok and result.facts["cpu_busy_pct"] == 10.0


def test_short_windows_reuse_the_last_measurement(tmp_path):
    stat(tmp_path, busy=0, idle=0)
    probe = CpuIdleProbe(str(tmp_path), max_busy_pct=30)
    first = probe.check(NOW)  # no ticks since construction: not measured, passes
    assert first.ok and first.facts["cpu_measured"] is False
    stat(tmp_path, busy=second() // 10, idle=second())
    assert probe.check(NOW).facts["cpu_busy_pct"] == pytest.approx(9.1)
    stat(tmp_path, busy=second() // 10 + 2, idle=second())  # 10 ms of 100% busy
    assert probe.check(NOW).facts["cpu_busy_pct"] == pytest.approx(9.1)


def test_cpu_busy_margin(tmp_path):
    busy, idle = 0, 0
    stat(tmp_path, busy, idle)
    probe = CpuIdleProbe(str(tmp_path), max_busy_pct=30, margin=5)
    for pct, ok in [(40, False), (28, False), (24, True), (29, True)]:
        busy, idle = busy + pct * second() // 100, idle + (100 - pct) * second() // 100
        stat(tmp_path, busy, idle)
        assert probe.check(NOW).ok is ok, pct


def test_loadavg_is_reported_and_capped_when_asked(tmp_path):
    stat(tmp_path, 0, 0, cpus=2)
    write(tmp_path, "loadavg", "3.00 2.00 1.00 3/200 999")
    assert CpuIdleProbe(str(tmp_path)).check(NOW).facts["load1"] == 3.0
    result = CpuIdleProbe(str(tmp_path), max_load_per_cpu=1.0).check(NOW)
    assert not result.ok and result.reason == "load 1.50 per cpu > 1.00"
    assert CpuIdleProbe(str(tmp_path), max_load_per_cpu=2.0).check(NOW).ok


def test_app_busy_hook(tmp_path):
    stat(tmp_path, 0, 0)
    busy = [True]
    probe = CpuIdleProbe(str(tmp_path), app_busy=lambda: busy[0])
    assert probe.check(NOW).reason == "app busy"
    busy[0] = False
    assert probe.check(NOW).ok


def test_unreadable_proc_stat(tmp_path):
    result = CpuIdleProbe(str(tmp_path)).check(NOW)
    assert not result.ok and result.reason.startswith("cpu state unknown: cannot read")
    write(tmp_path, "stat", "garbage")
    assert not CpuIdleProbe(str(tmp_path)).check(NOW).ok


# ---------------------------------------------------------------- network

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def routes(proc: Path, *entries: tuple[str, int]) -> None:
    lines = [HEADER]
    for iface, metric in entries:
        lines.append(f"{iface}\t00000000\t0101A8C0\t0003\t0\t0\t{metric}\t00000000\t0\t0\t0")
        lines.append(f"{iface}\t0001A8C0\t00000000\t0001\t0\t0\t{metric}\t00FFFFFF\t0\t0\t0")
    write(proc, "net/route", "\n".join(lines))


def network(tmp_path: Path, **kwargs) -> NetworkProbe:
    return NetworkProbe(str(tmp_path / "proc"), str(tmp_path / "sys"), **kwargs)


def test_default_route_on_wifi_is_ok(tmp_path):
    routes(tmp_path / "proc", ("wlan0", 600))
    result = network(tmp_path).check(NOW)
    assert result.ok and result.facts == {"online": True, "iface": "wlan0", "metered": False}


@pytest.mark.parametrize("iface", ["wwan0", "ppp0", "wwp0s20f0u6", "usb0"])
def test_cellular_names_are_metered(tmp_path, iface):
    routes(tmp_path / "proc", (iface, 700))
    result = network(tmp_path).check(NOW)
    assert not result.ok and result.reason == f"metered network ({iface})"
    assert result.facts["metered_by"] == "name"
    assert network(tmp_path, allow_metered=True).check(NOW).ok


def test_no_default_route_is_no_network(tmp_path):
    routes(tmp_path / "proc")
    result = network(tmp_path).check(NOW)
    assert not result.ok and result.reason == "no network"
    assert not network(tmp_path / "missing").check(NOW).ok


def test_lowest_metric_default_route_wins(tmp_path):
    routes(tmp_path / "proc", ("wwan0", 700), ("eth0", 100))
    assert network(tmp_path).check(NOW).facts["iface"] == "eth0"
    routes(tmp_path / "proc", ("wwan0", 50), ("eth0", 100))
    assert not network(tmp_path).check(NOW).ok


def test_ipv6_default_route_when_there_is_no_ipv4_one(tmp_path):
    routes(tmp_path / "proc")
    zero = "0" * 32
    write(tmp_path / "proc", "net/ipv6_route", "\n".join([
        f"{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo",
        f"{zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 "
        f"00450003    wwan0",
    ]))
    result = network(tmp_path).check(NOW)
    assert result.facts["iface"] == "wwan0" and not result.ok


@pytest.mark.parametrize("driver", ["qmi_wwan", "cdc_mbim", "cdc_ether", "rndis_host"])
def test_modem_drivers_are_metered(tmp_path, driver):
    routes(tmp_path / "proc", ("eth1", 100))
    target = tmp_path / "sys" / "bus" / "usb" / "drivers" / driver
    target.mkdir(parents=True)
    device = tmp_path / "sys" / "class" / "net" / "eth1" / "device"
    device.mkdir(parents=True)
    os.symlink(target, device / "driver")
    result = network(tmp_path).check(NOW)
    assert not result.ok and result.facts["metered_by"] == f"driver {driver}"


def test_devtype_wwan_is_metered(tmp_path):
    routes(tmp_path / "proc", ("mbim0", 100))
    write(tmp_path / "sys", "class/net/mbim0/uevent", "DEVTYPE=wwan\nINTERFACE=mbim0")
    assert network(tmp_path).check(NOW).facts["metered_by"] == "DEVTYPE=wwan"
    write(tmp_path / "sys", "class/net/mbim0/uevent", "DEVTYPE=wlan\nINTERFACE=mbim0")
    assert network(tmp_path).check(NOW).ok


def test_configured_metered_interfaces(tmp_path):
    routes(tmp_path / "proc", ("wlan1", 600))
    result = network(tmp_path, metered_interfaces=["wlan1"]).check(NOW)
    assert result.reason == "metered network (wlan1)" and result.facts["metered_by"] == "config"
    assert not network(tmp_path, metered_interfaces=["wlan*"]).check(NOW).ok
    assert network(tmp_path, metered_interfaces=["wlan0"]).check(NOW).ok


def test_nm_hook_is_asked_and_cached(tmp_path):
    routes(tmp_path / "proc", ("wlan0", 600))
    calls: list[str] = []
    answers = {"wlan0": True}

    def hook(iface: str) -> bool | None:
        calls.append(iface)
        return answers.get(iface)

    probe = network(tmp_path, nm_metered=hook, nm_cache_s=60)
    assert probe.check(NOW).facts["metered_by"] == "NetworkManager"
    answers["wlan0"] = False
    assert not probe.check(NOW + 30).ok  # cached
    assert probe.check(NOW + 61).ok
    assert calls == ["wlan0", "wlan0"]
    answers["wlan0"] = None
    assert network(tmp_path, nm_metered=hook).check(NOW).ok  # unknown: other sources decide


def test_nmcli_helper_with_a_fake_nmcli(tmp_path):
    fake = tmp_path / "nmcli"
    fake.write_text("#!/bin/sh\necho 'GENERAL.METERED:yes (guessed)'\n")
    fake.chmod(0o755)
    assert nm_metered_via_nmcli("wlan0", nmcli=str(fake)) is True
    assert nm_metered_via_nmcli("wlan0", nmcli=str(tmp_path / "missing")) is None
    fake.write_text("#!/bin/sh\nexit 10\n")
    assert nm_metered_via_nmcli("wlan0", nmcli=str(fake)) is None
    assert parse_nmcli_metered("GENERAL.METERED:no") is False
    assert parse_nmcli_metered("GENERAL.METERED:unknown") is None


# ---------------------------------------------------------------- thermal

def zone(sys_root: Path, n: int, milli: str, kind: str = "cpu-thermal") -> None:
    write(sys_root, f"class/thermal/thermal_zone{n}/temp", milli)
    write(sys_root, f"class/thermal/thermal_zone{n}/type", kind)


def test_hottest_zone_decides(tmp_path):
    zone(tmp_path, 0, "48000")
    zone(tmp_path, 1, "71000", "gpu-thermal")
    write(tmp_path, "class/thermal/cooling_device0/type", "fan")
    result = ThermalProbe(str(tmp_path), max_temp_c=70).check(NOW)
    assert not result.ok and result.reason == "too hot 71.0C > 70.0C"
    assert result.facts == {"temp_c": 71.0, "hottest_zone": "thermal_zone1 (gpu-thermal)"}


def test_no_thermal_zones_is_ok(tmp_path):
    result = ThermalProbe(str(tmp_path)).check(NOW)
    assert result.ok and result.facts == {"thermal": "no thermal zones"}


def test_unreadable_zones_are_skipped_unless_all_are(tmp_path):
    unreadable(tmp_path, "class/thermal/thermal_zone0/temp")
    result = ThermalProbe(str(tmp_path)).check(NOW)
    assert not result.ok and result.reason == "temperature unknown: no readable thermal zone"
    zone(tmp_path, 1, "50000")
    assert ThermalProbe(str(tmp_path)).check(NOW).ok


def test_temperature_margin(tmp_path):
    probe = ThermalProbe(str(tmp_path), max_temp_c=70, margin=5)
    for milli, ok in [("70000", True), ("70500", False), ("66000", False), ("65000", True)]:
        zone(tmp_path, 0, milli)
        assert probe.check(NOW).ok is ok, milli


# ---------------------------------------------------------------- time windows

UTC = timezone.utc


def at(hour: int, minute: int = 0) -> float:
    return datetime(2024, 3, 5, hour, minute, tzinfo=UTC).timestamp()


def test_inside_and_outside_a_window():
    probe = TimeWindowProbe(["01:00-05:00"], tz=UTC)
    assert probe.check(at(1)).ok and probe.check(at(4, 59)).ok
    result = probe.check(at(5))
    assert not result.ok and result.reason == "outside 01:00-05:00"
    assert result.facts == {"local_time": "05:00"}


def test_windows_that_wrap_midnight():
    probe = TimeWindowProbe(["22:30-06:00", "12:00-13:00"], tz=UTC)
    assert [probe.check(at(h, m)).ok for h, m in [(22, 30), (23, 59), (0, 0), (5, 59),
                                                   (6, 0), (12, 30), (22, 29)]] == \
        [True, True, True, True, False, True, False]
    assert probe.check(at(7)).reason == "outside 22:30-06:00, 12:00-13:00"


def test_all_day_and_time_zones():
    assert TimeWindowProbe(["00:00-24:00"], tz=UTC).check(at(23, 59)).ok
    plus2 = timezone(timedelta(hours=2))
    assert TimeWindowProbe(["01:00-05:00"], tz=plus2).check(at(0)).ok  # 02:00 there
    assert TimeWindowProbe(["01:00-05:00"], tz="UTC").check(at(2)).ok


@pytest.mark.parametrize("bad", ["1-5", "01:00", "25:00-01:00", "01:60-02:00", "aa:bb-cc:dd",
                                 "03:00-03:00", "24:00-01:00", "", "1:5-2:00"])
def test_bad_windows_fail_at_construction(bad):
    with pytest.raises(ValueError, match="time window"):
        TimeWindowProbe([bad])


def test_no_windows_or_unknown_zone_fail_at_construction():
    with pytest.raises(ValueError, match="at least one"):
        TimeWindowProbe([])
    with pytest.raises(ValueError, match="unknown time zone"):
        TimeWindowProbe(["01:00-02:00"], tz="Mars/Olympus")
