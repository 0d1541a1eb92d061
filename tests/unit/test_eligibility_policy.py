"""The eligibility policy: combining probes, hysteresis, failures, and the config table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_client.eligibility import (
    CpuIdleProbe,
    EligibilityConfig,
    EligibilityPolicy,
    NetworkProbe,
    PowerProbe,
    ProbeResult,
    ThermalProbe,
    TimeWindowProbe,
)
from edge_client.shared.settings import ConfigError, from_table


@dataclasses.dataclass
class Switch:
    """A probe the test flips by hand."""

    name: str
    ok: bool = True
    reason: str = "off"

    def check(self, now: float) -> ProbeResult:
        return ProbeResult(self.ok, "" if self.ok else self.reason, {self.name: self.ok})


class Broken:
    name = "door"

    def check(self, now: float) -> ProbeResult:
        raise OSError("sensor offline")


def test_all_ok_is_eligible_at_once():
    decision = EligibilityPolicy([Switch("a"), Switch("b")], hold_s=60).check(0.0)
    assert decision.eligible and decision.reasons == () and decision.reason == ""
    assert decision.facts == {"a": True, "b": True}


def test_unplug_is_immediate_and_replug_waits_for_the_hold():
    power = Switch("power", reason="on battery")
    policy = EligibilityPolicy([power, Switch("net")], hold_s=60)
    assert policy.check(0.0).eligible
    power.ok = False
    decision = policy.check(1.0)
    assert not decision.eligible and decision.reason == "on battery"
    power.ok = True
    held = policy.check(2.0)
    assert not held.eligible and held.reason == "holding: ok for 0.0s of 60s"
    assert held.facts["hold_left_s"] == 60.0
    assert not policy.check(61.9).eligible
    assert policy.check(62.0).eligible
    assert policy.check(63.0).eligible


def test_a_blip_during_the_hold_restarts_it():
    power = Switch("power")
    policy = EligibilityPolicy([power], hold_s=10)
    power.ok = False
    policy.check(0.0)
    power.ok = True
    policy.check(1.0)
    power.ok = False
    policy.check(8.0)
    power.ok = True
    assert not policy.check(9.0).eligible
    assert not policy.check(18.0).eligible
    assert policy.check(19.0).eligible


def test_clock_stepping_back_restarts_the_hold():
    power = Switch("power", ok=False)
    policy = EligibilityPolicy([power], hold_s=10)
    policy.check(100.0)
    power.ok = True
    policy.check(101.0)
    assert not policy.check(50.0).eligible
    assert policy.check(60.0).eligible


def test_reasons_from_every_failing_probe():
    policy = EligibilityPolicy([Switch("a", False, "on battery"), Switch("b"),
                                Switch("c", False, "no network")])
    assert policy.check(0.0).reason == "on battery; no network"


def test_a_probe_that_raises_is_not_ok_and_does_not_crash():
    decision = EligibilityPolicy([Switch("a"), Broken()]).check(0.0)
    assert not decision.eligible and decision.reasons == ("door failed: sensor offline",)
    assert decision.facts == {"a": True}


def test_a_probe_returning_junk_or_no_reason():
    class Junk:
        name = "junk"

        def check(self, now: float):
            return True

    class Silent:
        name = "silent"

        def check(self, now: float) -> ProbeResult:
            return ProbeResult(False)

    decision = EligibilityPolicy([Junk(), Silent()]).check(0.0)
    assert decision.reasons == ("junk failed: check() returned bool, not ProbeResult",
                                "silent not ok")


def test_battery_flapping_is_held_off_by_the_margin(tmp_path):
    """Battery hovering around the 20% floor: stops once, resumes only at 25% and after hold."""
    bat = tmp_path / "BAT0"
    bat.mkdir()
    (bat / "type").write_text("Battery\n")
    (bat / "status").write_text("Charging\n")
    policy = EligibilityPolicy([PowerProbe(str(tmp_path), min_battery_pct=20, margin=5)],
                               hold_s=30)
    timeline = [(0, "21", True), (10, "19", False), (20, "21", False), (30, "20", False),
                (40, "24", False), (50, "25", False), (79, "25", False), (80, "26", True),
                (90, "21", True)]
    for now, level, eligible in timeline:
        (bat / "capacity").write_text(level + "\n")
        assert policy.check(float(now)).eligible is eligible, (now, level)


def test_from_config_builds_the_standard_probes():
    policy = EligibilityPolicy.from_config(EligibilityConfig(windows=["01:00-05:00"]))
    kinds = [type(p) for p in policy.probes]
    assert kinds == [PowerProbe, CpuIdleProbe, NetworkProbe, ThermalProbe, TimeWindowProbe]
    assert policy.hold_s == 60.0
    power, idle, _net, thermal, _ = policy.probes
    assert power.floor.limit == 20 and power.floor.margin == 5
    assert idle.busy.limit == 30 and thermal.limit.limit == 70


def test_from_config_adds_extra_probes_and_app_busy(tmp_path):
    config = EligibilityConfig(sys_root=str(tmp_path), proc_root=str(tmp_path))
    door = Switch("door", ok=False, reason="room occupied")
    policy = EligibilityPolicy.from_config(config, app_busy=lambda: True, extra_probes=[door])
    assert policy.probes[-1] is door
    reasons = policy.check(0.0).reasons
    assert "app busy" in reasons and "room occupied" in reasons and "no network" in reasons


def test_disabled_means_always_eligible():
    policy = EligibilityPolicy.from_config(EligibilityConfig(enabled=False),
                                           extra_probes=[Switch("x", ok=False)])
    assert policy.probes == [] and policy.check(0.0).eligible


def test_config_from_a_toml_table():
    table = {"min_battery_pct": 30, "allow_metered": True, "metered_interfaces": ["wlan1"],
             "windows": ["22:00-06:00"], "hold_s": 120}
    config = from_table(EligibilityConfig, table, "[eligibility]")
    assert config.min_battery_pct == 30.0 and config.windows == ["22:00-06:00"]
    assert EligibilityConfig().windows == [] and EligibilityConfig().margin_pct == 5.0


@pytest.mark.parametrize("table, message", [
    ({"windows": ["25:00-01:00"]}, "time window '25:00-01:00'"),
    ({"min_battery_pct": 120}, "min_battery_pct"),
    ({"max_cpu_busy_pct": 0}, "max_cpu_busy_pct"),
    ({"hold_s": -1}, "hold_s"),
    ({"metered_interfaces": [3]}, "metered_interfaces"),
    ({"max_temp": 60}, "unknown key 'max_temp'"),
])
def test_bad_config_says_what_is_wrong(table, message):
    with pytest.raises(ConfigError, match=message):
        from_table(EligibilityConfig, table, "[eligibility]")


def test_the_door_sensor_example_from_the_docs(tmp_path):
    """docs/eligibility.md's custom probe, run as written."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "eligibility.md").read_text()
    start = doc.index("class RoomEmptyProbe")
    source = doc[start:doc.index("policy = EligibilityPolicy.from_config", start)]
    namespace = {"Path": Path, "ProbeResult": ProbeResult}
    exec(source, namespace)
    state = tmp_path / "state"
    probe = namespace["RoomEmptyProbe"](str(state))
    policy = EligibilityPolicy([probe], hold_s=10)
    state.write_text("empty\n")
    assert policy.check(0.0).eligible
    state.write_text("occupied\n")
    assert policy.check(1.0).reason == "room occupied"
    state.unlink()
    assert policy.check(2.0).reason.startswith("room failed: [Errno 2]")
    state.write_text("empty\n")
    assert not policy.check(3.0).eligible and policy.check(13.0).eligible
