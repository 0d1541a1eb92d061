"""The device-profile simulator drives the real probes through fake trees."""

from __future__ import annotations

import itertools

import pytest

from edge_client.eligibility import EligibilityConfig
from fedge.profiles import (
    PROFILES,
    AlwaysOn,
    DeviceState,
    Diurnal,
    FakeDeviceTree,
    apply,
    policy_for,
    profile_by_name,
)

CONFIG = EligibilityConfig(hold_s=1.0)  # simulated seconds: a day is 20 s
GOOD = DeviceState(charging=True, battery_pct=80.0, busy_pct=5.0, iface="wlan0", temp_c=45.0)


@pytest.fixture
def tree(tmp_path):
    return FakeDeviceTree(tmp_path / "dev0", cpus=2)


def test_a_fresh_tree_is_a_mains_pi_without_a_network(tree):
    decision = policy_for(tree, CONFIG).check(0.0)
    assert decision.reasons == ("no network",)
    assert decision.facts["has_battery"] is False


@pytest.mark.parametrize("change, reason", [
    ({}, ""),
    ({"charging": False}, "on battery"),
    ({"battery_pct": 12.0}, "battery 12% < 20%"),
    ({"busy_pct": 73.0}, "cpu busy 73% > 30%"),
    ({"iface": "wwan0"}, "metered network (wwan0)"),
    ({"iface": None}, "no network"),
    ({"temp_c": 71.0}, "too hot 71.0C > 70.0C"),
    ({"battery_pct": None, "charging": False}, ""),  # no battery: a mains-powered Pi
])
def test_states_through_the_real_probes(tree, change, reason):
    policy = policy_for(tree, CONFIG)
    apply(tree, DeviceState(**{**GOOD.__dict__, **change}))
    decision = policy.check(0.0)
    assert decision.reason == reason and decision.eligible is (reason == "")


def test_shrinking_values_and_a_reused_root_read_back_exactly(tmp_path, tree):
    policy = policy_for(tree, CONFIG)
    for celsius, battery in [(100.0, 100.0), (9.0, 9.0), (45.5, 55.0)]:
        apply(tree, DeviceState(True, battery, 5.0, "wlan0", celsius))
        facts = policy.check(0.0).facts
        assert (facts["temp_c"], facts["battery_pct"]) == (celsius, battery)
    apply(tree, DeviceState(True, None, 5.0, "wlan0", 45.0))
    assert policy.check(0.0).facts["has_battery"] is False
    again = FakeDeviceTree(tree.root, cpus=2)  # same folder, longer files already there
    again.set_temperature(7.0)
    assert policy_for(again, CONFIG).check(0.0).facts["temp_c"] == 7.0


def test_replug_through_the_tree_waits_for_the_hold(tree):
    policy = policy_for(tree, CONFIG)
    unplugged = DeviceState(**{**GOOD.__dict__, "charging": False})
    eligible = []
    for now, state in [(0.0, GOOD), (0.5, unplugged), (1.0, GOOD), (1.5, GOOD), (2.0, GOOD)]:
        apply(tree, state)
        eligible.append(policy.check(now).eligible)
    assert eligible == [True, False, False, False, True]


def test_always_on_is_always_eligible(tree):
    policy, profile = policy_for(tree, CONFIG), profile_by_name("always", seed=3)
    for step in range(10):
        apply(tree, profile.state_at(step * 0.5, 0))
        assert policy.check(step * 0.5).eligible
    assert profile.speed_factor(7) == 1.0


def timeline(tmp_path, profile, device: int, steps: int = 60) -> list[bool]:
    """Eligibility over one simulated day, sampled `steps` times."""
    tree = FakeDeviceTree(tmp_path / f"dev{device}", cpus=2)
    policy = policy_for(tree, EligibilityConfig(hold_s=0.5))
    out = []
    for step in range(steps):
        t = step * profile.period_s / steps
        apply(tree, profile.state_at(t, device))
        out.append(policy.check(t).eligible)
    return out


def test_diurnal_gives_every_device_eligible_and_ineligible_periods(tmp_path):
    profile = Diurnal(period_s=20.0, seed=7)
    days = [timeline(tmp_path, profile, d) for d in range(3)]
    for day in days:
        assert 0.1 < sum(day) / len(day) < 0.5
        assert any(a and not b for a, b in itertools.pairwise(day))  # it stops at least once
    assert len({tuple(day) for day in days}) == 3  # phases differ per device


def test_diurnal_is_deterministic_for_a_seed(tmp_path):
    a, b, c = Diurnal(seed=1), Diurnal(seed=1), Diurnal(seed=2)
    times = [i * 0.37 for i in range(120)]
    assert [a.state_at(t, 3) for t in times] == [b.state_at(t, 3) for t in reversed(times)][::-1]
    assert [a.state_at(t, 3) for t in times] != [c.state_at(t, 3) for t in times]
    assert timeline(tmp_path / "x", a, 1) == timeline(tmp_path / "y", b, 1)
    assert a.speed_factor(5) == b.speed_factor(5)


def test_diurnal_states_are_plain_python_and_varied():
    profile = Diurnal(seed=0)
    states = [profile.state_at(t * 0.1, d) for t in range(200) for d in range(5)]
    assert all(type(s.busy_pct) is float and type(s.charging) is bool for s in states)
    assert {s.iface for s in states} == {"wlan0", "wwan0", None}
    assert any(s.charging for s in states) and not all(s.charging for s in states)
    speeds = [profile.speed_factor(d) for d in range(20)]
    assert all(0.25 <= s <= 1.0 for s in speeds) and len(set(speeds)) == 20


def test_profile_by_name():
    assert set(PROFILES) == {"always", "diurnal", "stragglers"}
    assert isinstance(profile_by_name("always"), AlwaysOn)
    assert profile_by_name("diurnal", seed=4) == Diurnal(seed=4)
    with pytest.raises(ValueError, match="unknown profile 'weekly'"):
        profile_by_name("weekly")
