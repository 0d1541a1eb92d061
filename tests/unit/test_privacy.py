"""Differential privacy math: clipping, adaptive clipping, noise, the DP-FedAvg wrappers,
the device's share of distributed noise, and the accountant against dp-accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from aggregator.privacy import (
    Accountant,
    CentralDp,
    DistributedDp,
    DpState,
    PrivacyConfig,
    Step,
    epsilon,
    l2_clip,
    next_clip,
)
from aggregator.strategy import Contribution, FedAdam, FedAvg
from edge_client.shared.codecs.dp import DeviceDp, clip_and_noise
from edge_client.shared.protocol import RemoteProtocolError
from edge_client.shared.protocol.tensors import flatten_sorted, unflatten_like

MODEL = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 3), np.float32)}  # 9 values


def _delta(values) -> dict[str, np.ndarray]:
    return unflatten_like(np.asarray(values, np.float32), MODEL)


def _central(config: PrivacyConfig, cohort: int, clip: float | None = None,
             version: int = 1, inner=None) -> CentralDp:
    state = DpState(clip=config.start_clip if clip is None else clip, version=version)
    return CentralDp(inner or FedAvg(), config, cohort, state)


# ---------------------------------------------------------------- clipping
def test_clip_scales_only_rows_over_the_bound_and_keeps_their_direction():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    clipped = l2_clip(rows, 1.0)
    norms_after = np.linalg.norm(clipped.rows, axis=1)
    assert norms_after == pytest.approx([1.0, 0.5, 0.0, 1.0])
    assert clipped.rows[1] == pytest.approx(rows[1])  # within the bound: untouched
    assert clipped.rows[0] == pytest.approx([0.6, 0.8])  # same direction
    assert clipped.rows[3] == pytest.approx([-0.6, 0.8])
    assert clipped.norms == pytest.approx([5.0, 0.5, 0.0, 10.0])
    assert clipped.unclipped == 2


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_clip_refuses_a_bad_bound(bound):
    with pytest.raises(ValueError, match="clip bound"):
        l2_clip(np.ones((2, 2)), bound)


def test_random_updates_never_exceed_the_clip_after_clipping():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(50, 200)) * rng.lognormal(0, 2, size=(50, 1))
    for bound in (0.01, 1.0, 30.0):
        assert np.linalg.norm(l2_clip(rows, bound).rows, axis=1).max() <= bound * (1 + 1e-12)


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.01), (0.5, 100.0), (0.9, 0.01),
                                                 (0.2, 100.0)])
def test_adaptive_clip_moves_to_the_target_quantile_of_the_norms(quantile, start):
    """Andrew et al.'s geometric update on synthetic lognormal norms, 100 updates a round:
    from far below or far above, C ends near the norms' quantile (known in closed form)."""
    rng = np.random.default_rng(7)
    clip, seen = start, []
    for step in range(400):
        norms = rng.lognormal(0.0, 0.5, size=100)
        unclipped = int(np.count_nonzero(norms <= clip))
        clip = next_clip(clip, unclipped, 100, quantile, 0.2, 1.0, rng, devices=100)
        if step >= 300:
            seen.append(clip)
    true_quantile = math.exp(0.5 * _normal_quantile(quantile))
    assert np.mean(seen) == pytest.approx(true_quantile, rel=0.1)


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist
    return NormalDist().inv_cdf(p)


def test_adaptive_clip_step_has_the_papers_sign_and_size():
    """Every update unclipped (b = 1 > gamma): C shrinks by exp(-eta (1 - gamma))."""
    rng = np.random.default_rng(0)
    shrunk = next_clip(2.0, 10, 10, 0.5, 0.2, 1e-12, rng, devices=10)
    assert shrunk == pytest.approx(2.0 * math.exp(-0.2 * 0.5))
    grown = next_clip(2.0, 0, 10, 0.5, 0.2, 1e-12, rng, devices=10)
    assert grown == pytest.approx(2.0 * math.exp(0.2 * 0.5))


def _adaptive_step(norms: list[float], cohort: int = 10) -> float:
    """log(next clip / clip) after one central aggregation of updates with these norms;
    seeded, so runs with the same number of coordinates draw the same count noise."""
    config = PrivacyConfig(mode="central", clip="adaptive", initial_clip=1.0,
                           noise_multiplier=1.0, clip_count_stddev=2.0, seed=8)
    dp = _central(config, cohort)
    dp.aggregate(MODEL, [Contribution(f"d{i}", _delta([n] + [0] * 8), 1)
                         for i, n in enumerate(norms)])
    return math.log(dp.state.last.next_clip)


def test_adaptive_count_has_the_sensitivity_its_noise_is_calibrated_to():
    """update_noise_multiplier pays for a count of sensitivity 1/2 (Andrew et al.'s
    centred bits): adding or removing one device, clipped or not, moves the noisy share
    by exactly 1/(2 m), so the clip's log moves by clip_lr / (2 m) and no more."""
    base = _adaptive_step([0.5, 3.0])  # one unclipped, one clipped (C = 1)
    for neighbour in ([0.5, 3.0, 0.2], [0.5, 3.0, 7.0], [0.5], [3.0]):
        assert abs(_adaptive_step(neighbour) - base) == pytest.approx(0.2 / (2 * 10))


def test_adaptive_count_refuses_more_unclipped_than_devices():
    with pytest.raises(ValueError, match="unclipped"):
        next_clip(1.0, 3, 10, 0.5, 0.2, 1.0, np.random.default_rng(0), devices=2)


# ---------------------------------------------------------------- central DP
def test_central_noise_std_is_z_clip_over_cohort():
    """Zero updates: the step is the noise alone; its std over 200k coordinates."""
    model = {"w": np.zeros(200_000, np.float32)}
    config = PrivacyConfig(mode="central", clip=0.5, noise_multiplier=1.3, seed=11)
    dp = CentralDp(FedAvg(), config, 8, DpState(clip=0.5, version=1))
    zero = [Contribution(f"d{i}", {"w": np.zeros(200_000, np.float32)}, 10) for i in range(5)]
    step = dp.aggregate(model, zero)["w"].astype(np.float64)
    assert step.std() == pytest.approx(1.3 * 0.5 / 8, rel=0.01)
    assert abs(step.mean()) < 5 * 1.3 * 0.5 / 8 / math.sqrt(200_000)
    assert dp.state.last.noise_std == pytest.approx(1.3 * 0.5 / 8)


def test_central_noise_with_adaptive_clipping_pays_for_the_count():
    """z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2: a little more noise on the update."""
    model = {"w": np.zeros(100_000, np.float32)}
    config = PrivacyConfig(mode="central", clip="adaptive", initial_clip=0.2,
                           noise_multiplier=1.0, clip_count_stddev=2.0, seed=5)
    dp = CentralDp(FedAvg(), config, 10, DpState(clip=0.2, version=1))
    zero = [Contribution("d", {"w": np.zeros(100_000, np.float32)}, 1)]
    z_delta = (1.0 - 4.0 ** -2) ** -0.5
    assert dp.update_noise_multiplier == pytest.approx(z_delta)
    std = dp.aggregate(model, zero)["w"].astype(np.float64).std()
    assert std == pytest.approx(z_delta * 0.2 / 10, rel=0.015)
    assert dp.state.last.next_clip != 0.2  # the adaptive step ran


def test_central_mean_is_uniform_over_the_cohort_and_clipped():
    """Sample counts do not weigh: each device's clipped update counts 1/m."""
    config = PrivacyConfig(mode="central", clip=1.0, noise_multiplier=1.0, seed=3)
    dp = _central(config, cohort=4, version=7)
    big = [3.0, 4.0, 0, 0, 0, 0, 0, 0, 0]  # norm 5: clipped to [0.6, 0.8, ...]
    small = [0, 0, 0.1, 0, 0, 0, 0, 0, 0]  # within the bound
    result = dp.aggregate(MODEL, [Contribution("a", _delta(big), 1000),
                                  Contribution("b", _delta(small), 1)])
    noise = np.random.default_rng([3, 7]).normal(0.0, 1.0 * 1.0 / 4, 9)
    expected = (np.array([0.6, 0.8, 0.1, 0, 0, 0, 0, 0, 0]) / 4 + noise).astype(np.float32)
    assert flatten_sorted(result) == pytest.approx(expected, abs=1e-6)
    assert dp.state.last.clipped == {"a": pytest.approx(5.0)}
    assert dp.state.last.devices == 2


def test_central_noise_is_seeded_by_seed_and_version_or_fresh():
    contributions = [Contribution("a", _delta(np.ones(9)), 1)]
    seeded = PrivacyConfig(mode="central", clip=1.0, seed=9)
    one = flatten_sorted(_central(seeded, 2, version=4).aggregate(MODEL, contributions))
    again = flatten_sorted(_central(seeded, 2, version=4).aggregate(MODEL, contributions))
    other = flatten_sorted(_central(seeded, 2, version=5).aggregate(MODEL, contributions))
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    fresh = PrivacyConfig(mode="central", clip=1.0)
    a = flatten_sorted(_central(fresh, 2, version=4).aggregate(MODEL, contributions))
    b = flatten_sorted(_central(fresh, 2, version=4).aggregate(MODEL, contributions))
    assert not np.array_equal(a, b)


def test_one_devices_updates_in_one_version_are_summed_before_the_clip():
    """Async: a stale and a fresh update of one device move the mean by at most C / m."""
    config = PrivacyConfig(mode="central", clip=1.0, seed=1)
    dp = _central(config, cohort=2)
    two = [Contribution("a", _delta([1.0] + [0] * 8), 5, staleness_factor=1.0),
           Contribution("a", _delta([1.0] + [0] * 8), 5, staleness_factor=0.5)]
    result = flatten_sorted(dp.aggregate(MODEL, two))
    noise = np.random.default_rng([1, 1]).normal(0.0, 0.5, 9)
    assert result[0] - noise[0] == pytest.approx(1.0 / 2, abs=1e-6)  # 1.5 clipped to 1
    assert dp.state.last.devices == 1 and dp.state.last.clipped == {"a": pytest.approx(1.5)}


def test_central_dp_feeds_the_noisy_mean_to_a_server_optimizer():
    config = PrivacyConfig(mode="central", clip=1.0, seed=2)
    updates = [Contribution("a", _delta(np.full(9, 0.1)), 3),
               Contribution("b", _delta(np.full(9, -0.05)), 9)]
    private = _central(config, 2, inner=FedAdam()).aggregate(MODEL, updates)
    noise = np.random.default_rng([2, 1]).normal(0.0, 0.5, 9)
    mean = np.full(9, 0.025) + noise
    direct = FedAdam().aggregate(MODEL, [Contribution("m", _delta(mean), 1)])
    assert flatten_sorted(private) == pytest.approx(flatten_sorted(direct), abs=1e-6)


def test_central_dp_drops_non_finite_updates_and_refuses_an_empty_round():
    config = PrivacyConfig(mode="central", clip=1.0, seed=2)
    bad = _delta([np.nan] + [0] * 8)
    with pytest.raises(ValueError):
        _central(config, 2).aggregate(MODEL, [Contribution("a", bad, 1)])
    with pytest.raises(ValueError):
        _central(config, 2).aggregate(MODEL, [])


# ---------------------------------------------------------------- distributed DP
def test_device_noise_share_sums_to_the_central_noise():
    """Each of m devices adds std z C / sqrt(m); their sum has std z C, so the mean over
    m has the central z C / m."""
    dp = DeviceDp.share(clip=0.8, noise_multiplier=1.5, cohort=9)
    assert dp.noise_std == pytest.approx(1.5 * 0.8 / 3)
    rng = np.random.default_rng(4)
    shares = [clip_and_noise(np.zeros(50_000), dp, rng)[0] for _ in range(9)]
    assert shares[0].std() == pytest.approx(dp.noise_std, rel=0.02)
    total = np.sum(shares, axis=0, dtype=np.float64)
    assert total.std() == pytest.approx(1.5 * 0.8, rel=0.02)


def test_device_clips_the_whole_update_before_its_noise():
    dp = DeviceDp(clip=1.0, noise_std=1e-9)
    out, clipped = clip_and_noise(np.array([30.0, 40.0]), dp, np.random.default_rng(0))
    assert clipped and out == pytest.approx([0.6, 0.8], abs=1e-6)
    out, clipped = clip_and_noise(np.array([0.3, 0.4]), dp, np.random.default_rng(0))
    assert not clipped and out == pytest.approx([0.3, 0.4], abs=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        clip_and_noise(np.array([np.nan, 1.0]), dp, np.random.default_rng(0))


def test_device_dp_settings_round_trip_and_refuse_bad_input():
    dp = DeviceDp.share(0.5, 1.0, 4)
    assert DeviceDp.from_wire(dp.to_wire()) == dp
    for raw, match in [([], "map"), ({**dp.to_wire(), "v": 2}, "version 2"),
                       ({"v": 1, "clip": 1.0}, "missing"), ({**dp.to_wire(), "x": 1}, "unknown"),
                       ({**dp.to_wire(), "clip": -1.0}, "clip"),
                       ({**dp.to_wire(), "noise_std": True}, "noise_std"),
                       ({**dp.to_wire(), "clip": math.inf}, "clip")]:
        with pytest.raises(RemoteProtocolError, match=match):
            DeviceDp.from_wire(raw)


def test_distributed_server_sums_over_the_cohort_without_clipping_or_noise():
    """A plain (unmasked) sum for now: secure aggregation will supply it later."""
    config = PrivacyConfig(mode="distributed", clip=1.0)
    state = DpState(clip=1.0, version=1)
    dp = DistributedDp(FedAvg(), config, 4, state)
    updates = [Contribution("a", _delta(np.full(9, 2.0)), 1),
               Contribution("b", _delta(np.full(9, 1.0)), 100)]
    result = flatten_sorted(dp.aggregate(MODEL, updates))
    assert result == pytest.approx(np.full(9, 3.0 / 4))
    assert state.last.devices == 2 and state.last.clipped == {}
    assert state.last.noise_std == pytest.approx(1.0 * math.sqrt(2 / 4) / 4)
    with pytest.raises(ValueError, match="one update per device"):
        dp.aggregate(MODEL, [updates[0], updates[0]])
    summed = flatten_sorted(dp.aggregate_sum(MODEL, np.full(9, 3.0), devices=2))
    assert summed == pytest.approx(result)  # the secure sum's entry point: same result


# ---------------------------------------------------------------- the accountant
def _reference(q: float, z: float, steps: int, delta: float) -> float:
    """dp-accounting used directly, as its documentation shows."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("q", "z", "steps", "delta"), [
    (0.01, 1.0, 1000, 1e-5), (0.1, 0.8, 50, 1e-6), (1.0, 1.0, 10, 1e-5), (0.3, 2.0, 7, 1e-3)])
def test_accountant_matches_dp_accounting(q, z, steps, delta):
    """Step by step (as the service records versions) and all at once (a restart)."""
    accountant = Accountant(delta)
    for _ in range(min(steps, 10)):
        last = accountant.record(Step(q, z))
    assert last == pytest.approx(_reference(q, z, min(steps, 10), delta), rel=1e-9)
    resumed = Accountant(delta, [Step(q, z)] * (steps - 1))
    assert resumed.epsilon_after(Step(q, z)) == pytest.approx(_reference(q, z, steps, delta),
                                                              rel=1e-9)
    assert resumed.record(Step(q, z)) == pytest.approx(_reference(q, z, steps, delta), rel=1e-9)


def test_the_known_figure_for_sigma_1_q_001_1000_steps():
    """DESIGN.md measured about 2.10 for these settings."""
    assert epsilon([Step(0.01, 1.0)] * 1000, 1e-5) == pytest.approx(2.10, abs=0.01)


def test_accountant_composes_changing_steps_like_dp_accounting():
    steps = [Step(0.2, 1.0)] * 3 + [Step(0.5, 1.0)] * 2 + [Step(0.2, 0.7)]
    reference = rdp.RdpAccountant()
    for s in steps:
        reference.compose(dp_event.PoissonSampledDpEvent(
            s.sampling_rate, dp_event.GaussianDpEvent(s.noise_multiplier)))
    assert epsilon(steps, 1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_accountant_grows_and_resumes_from_stored_history():
    accountant = Accountant(1e-5)
    values = [accountant.record(Step(0.5, 1.1)) for _ in range(5)]
    assert values == sorted(values) and values[0] > 0
    assert accountant.epsilon_after(Step(0.5, 1.1)) > values[-1]
    history = [{"version": 0}] + [{"version": v, "dp_sampling_rate": 0.5,
                                   "dp_noise_multiplier": 1.1} for v in range(1, 6)]
    assert Accountant.from_history(history, 1e-5).epsilon() == pytest.approx(values[-1])
    assert Accountant(1e-5).epsilon() == 0.0


@pytest.mark.parametrize(("q", "z"), [(0.0, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_a_step_refuses_impossible_parameters(q, z):
    with pytest.raises(ValueError):
        Step(q, z)
