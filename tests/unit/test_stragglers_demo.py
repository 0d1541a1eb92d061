"""`fedge demo --stragglers`: the Stragglers profile's log-normal speeds and the flags that
turn on a round deadline and partial work (docs/heterogeneity.md)."""

from __future__ import annotations

import pytest

from edge_client.training import mlp_trainer
from fedge.demo_flags import STRAGGLER_PROX_MU, parse_demo_flags
from fedge.fleet import SlowTrainer
from fedge.profiles import Stragglers


def test_the_slowest_of_five_is_ten_times_the_fastest():
    profile = Stragglers(seed=42, devices=5)
    slowdowns = sorted(profile.slowdown(i) for i in range(5))
    assert slowdowns[0] == pytest.approx(1.0)
    assert slowdowns[-1] == pytest.approx(10.0, rel=0.02)
    assert slowdowns[2] == pytest.approx(3.17, rel=0.02)  # the median
    assert profile.speed_factor(0) == pytest.approx(1 / profile.slowdown(0))
    assert Stragglers(seed=42, devices=5).state_at(0.0, 3) == profile.state_at(9.0, 3)


def test_a_seed_decides_which_device_is_slow():
    orders = {tuple(round(Stragglers(seed=s, devices=5).slowdown(i), 3) for i in range(5))
              for s in range(6)}
    assert len(orders) > 1


def test_stragglers_turn_on_a_deadline_partial_work_and_fedprox():
    demo = parse_demo_flags(["--stragglers"])
    config = demo.aggregator
    assert demo.fleet.profile == "stragglers"
    assert config.train.partial_work == "deadline" and config.train.prox_mu == STRAGGLER_PROX_MU
    assert config.sync.round_timeout_s == 1.0 and config.sync.target_updates == 5
    off = parse_demo_flags(["--stragglers", "--partial-work", "off"]).aggregator
    assert off.train.partial_work == "off" and off.train.prox_mu == 0.0


def test_the_default_demo_has_no_partial_work():
    config = parse_demo_flags([]).aggregator
    assert config.train.partial_work == "off" and config.train.prox_mu == 0.0


@pytest.mark.parametrize(("argv", "message"), [
    (["--stragglers", "--profile", "diurnal"], "--stragglers is a profile of its own"),
    (["--round-timeout", "0"], "--round-timeout must be > 0"),
])
def test_bad_straggler_flags_are_refused(argv: list[str], message: str):
    with pytest.raises(ValueError, match=message):
        parse_demo_flags(argv)


def test_a_waiting_trainer_waits_the_given_time_per_batch():
    trainer = SlowTrainer.waiting(mlp_trainer([4, 3]), 0.25)
    assert trainer.delay_s == 0.25
