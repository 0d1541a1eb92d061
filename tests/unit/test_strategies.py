"""Robust strategies and server optimizers with tiny hand-computed arrays."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator.strategy import (
    STRATEGIES,
    Contribution,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    Krum,
    Median,
    NormBound,
    StrategyConfig,
    TrimmedMean,
    build_strategy,
    strategy_by_name,
)
from aggregator.strategy.krum import aggregate_krum, krum_scores
from aggregator.strategy.median import aggregate_median
from aggregator.strategy.norm_bound import clip_to_norm
from aggregator.strategy.trimmed_mean import aggregate_trimmed_mean
from edge_client.shared.settings import ConfigError, from_table

ROBUST = ("median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


def _c(device: str, values: list[float], samples: int = 1,
       factor: float = 1.0) -> Contribution:
    return Contribution(device, {"w": np.array(values, np.float32)}, samples, factor)


def _zeros(size: int = 1) -> dict[str, np.ndarray]:
    return {"w": np.zeros(size, np.float32)}


def _round(strategy, values: list[list[float]], start=None, **kw) -> np.ndarray:
    contributions = [_c(f"d{i}", v) for i, v in enumerate(values)]
    return strategy.aggregate(start or _zeros(len(values[0])), contributions, **kw)["w"]


# ------------------------------------------------------------ median and trimmed mean
def test_median_ignores_the_outlier():
    # Prepare: two honest updates and one 50x too large
    updates = [[1.0], [2.0], [100.0]]
    # Execute
    new = _round(Median(), updates, start={"w": np.array([10.0], np.float32)})
    # Assert: 10 + median(1, 2, 100)
    np.testing.assert_array_equal(new, [12.0])


def test_median_is_per_coordinate_and_keeps_tensor_layout():
    start = {"b": np.zeros(2, np.float32), "a": np.zeros((1, 2), np.float32)}
    contributions = [Contribution(d, {"b": np.array(b, np.float32),
                                      "a": np.array([a], np.float32)}, 1)
                     for d, b, a in [("x", [1, 9], [5, 0]), ("y", [2, 8], [6, 1]),
                                     ("z", [3, -70], [70, 2])]]
    new = Median().aggregate(start, contributions)
    assert list(new) == ["b", "a"] and new["a"].shape == (1, 2)
    np.testing.assert_array_equal(new["b"], [2, 8])
    np.testing.assert_array_equal(new["a"], [[6, 1]])


def test_trimmed_mean_cuts_beta_n_from_each_side():
    # 5 updates, beta 0.2: cut 1 per side, then mean(2, 3, 4) = 3
    np.testing.assert_array_equal(
        aggregate_trimmed_mean([[1.0], [2.0], [3.0], [4.0], [100.0]], 0.2), [3.0])
    # per coordinate: the second column's extremes are other updates
    np.testing.assert_allclose(
        aggregate_trimmed_mean([[1, -50], [2, 6], [3, 5], [4, 4], [100, 7]], 0.2), [3, 5])


def test_trimmed_mean_with_beta_zero_is_the_mean_and_warns_when_it_trims_nothing(caplog):
    np.testing.assert_allclose(aggregate_trimmed_mean([[1.0], [2.0], [6.0]], 0.0), [3.0])
    with caplog.at_level(logging.WARNING):
        new = _round(TrimmedMean(0.2), [[1.0], [2.0], [6.0]])  # floor(0.6) = 0
    np.testing.assert_allclose(new, [3.0])
    assert "trim nothing" in caplog.text


def test_robust_rules_see_staleness_as_a_smaller_step():
    contributions = [_c("a", [2.0], factor=0.5), _c("b", [4.0], factor=0.5),
                     _c("c", [6.0], factor=0.5)]
    np.testing.assert_allclose(Median().aggregate(_zeros(), contributions)["w"], [2.0])


# ------------------------------------------------------------ Krum
# Honest 0, 1, 2, 4, 7 and attackers at +-100; f = 2, so each score sums the squared
# distances to the n - f - 2 = 3 nearest others:
#   0: 1 + 4 + 16 = 21   1: 1 + 1 + 9 = 11   2: 1 + 4 + 4 = 9   4: 4 + 9 + 9 = 22
#   7: 9 + 25 + 36 = 70  +-100: thousands
KRUM_UPDATES = [[0.0], [1.0], [2.0], [4.0], [7.0], [100.0], [-100.0]]


def test_krum_scores_by_hand():
    scores = krum_scores(KRUM_UPDATES, f=2)
    np.testing.assert_allclose(scores[:5], [21, 11, 9, 22, 70])
    assert scores[5:].min() > 1000


def test_krum_picks_from_the_honest_cluster():
    np.testing.assert_array_equal(_round(Krum(byzantine=2), KRUM_UPDATES), [2.0])


def test_multi_krum_averages_the_m_best():
    # m = 3: updates 2, 1, 0 -> mean 1; m = None: n - f = 5 -> every honest one, 2.8
    np.testing.assert_allclose(aggregate_krum(KRUM_UPDATES, f=2, m=3), [1.0])
    np.testing.assert_allclose(_round(Krum(byzantine=2, m=None), KRUM_UPDATES), [2.8])
    # more than n - f is capped at n - f: never averages in a sure attacker
    np.testing.assert_allclose(_round(Krum(byzantine=2, m=50), KRUM_UPDATES), [2.8])


def test_krum_falls_back_to_the_median_with_too_few_updates(caplog):
    # f = 1 needs n > 4; with 4 updates the round is the median, 2.5
    with caplog.at_level(logging.WARNING):
        new = _round(Krum(byzantine=1), [[1.0], [2.0], [3.0], [100.0]])
    np.testing.assert_allclose(new, [2.5])
    assert "coordinate-wise median" in caplog.text


def test_krum_function_refuses_too_few_updates():
    with pytest.raises(ValueError, match="more than 4"):
        krum_scores([[1.0], [2.0], [3.0], [4.0]], f=1)


# ------------------------------------------------------------ norm bounding
def test_norm_bound_clips_the_boosted_update_to_the_median_norm():
    # norms 5, 5, 50: the median is 5, so the 10x update becomes (3, 4) like the others
    new = _round(NormBound(), [[3.0, 4.0], [3.0, 4.0], [30.0, 40.0]])
    np.testing.assert_allclose(new, [3.0, 4.0], rtol=1e-6)


def test_norm_bound_with_a_fixed_bound_keeps_fedavg_weights():
    # (6, 8) has norm 10 and becomes (3, 4); weights 1/4 and 3/4:
    # 0.25 * (0, 1) + 0.75 * (3, 4) = (2.25, 3.25)
    contributions = [_c("a", [0.0, 1.0], samples=1), _c("b", [6.0, 8.0], samples=3)]
    new = NormBound(bound=5.0).aggregate(_zeros(2), contributions)["w"]
    np.testing.assert_allclose(new, [2.25, 3.25], rtol=1e-6)


def test_clip_leaves_zero_and_short_updates_alone():
    clipped = clip_to_norm([[0.0, 0.0], [0.3, 0.4], [6.0, 8.0]], bound=1.0)
    np.testing.assert_allclose(clipped, [[0, 0], [0.3, 0.4], [0.6, 0.8]])


# ------------------------------------------------------------ server optimizers
def test_fedavgm_accumulates_momentum():
    # m = 0.5 m + g: step 1 m = 1 -> x = 1; step 2 m = 1.5 -> x = 2.5
    opt = FedAvgM(eta=1.0, momentum=0.5)
    x = _round(opt, [[1.0]])
    np.testing.assert_allclose(x, [1.0])
    np.testing.assert_allclose(_round(opt, [[1.0]], start={"w": x}), [2.5])


def test_fedadam_two_steps_by_hand():
    # beta1 = beta2 = 0.5, tau = 1 (v starts at tau^2 = 1), g = 1 both rounds:
    # 1: m = 0.5,  v = 0.5 + 0.5 = 1, step = 0.5 / (1 + 1) = 0.25
    # 2: m = 0.75, v = 1,             step = 0.75 / 2 = 0.375 -> x = 0.625
    opt = FedAdam(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    x = _round(opt, [[1.0]])
    np.testing.assert_allclose(x, [0.25])
    np.testing.assert_allclose(_round(opt, [[1.0]], start={"w": x}), [0.625])


def test_fedyogi_two_steps_by_hand():
    # beta1 = beta2 = 0.5, tau = 1: g = 4 then g = 0
    # 1: m = 2, v = 1 - 0.5 * 16 * sign(1 - 16) = 9, step = 2 / (3 + 1) = 0.5
    # 2: m = 1, v = 9 - 0 = 9 (Yogi's v does not decay when g is 0), step = 0.25
    opt = FedYogi(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    x = _round(opt, [[4.0]])
    np.testing.assert_allclose(x, [0.5])
    np.testing.assert_allclose(_round(opt, [[0.0]], start={"w": x}), [0.75])
    np.testing.assert_allclose(opt.v, [9.0])


def test_fedadagrad_two_steps_by_hand():
    # beta1 = 0.5, tau = 3 (v starts at 9): g = 4 then g = 0
    # 1: m = 2, v = 9 + 16 = 25, step = 2 / (5 + 3) = 0.25
    # 2: m = 1, v = 25,          step = 1 / 8 = 0.125 -> x = 0.375
    opt = FedAdagrad(eta=1.0, beta1=0.5, tau=3.0)
    x = _round(opt, [[4.0]])
    np.testing.assert_allclose(x, [0.25])
    np.testing.assert_allclose(_round(opt, [[0.0]], start={"w": x}), [0.375])


def test_optimizers_take_the_weighted_mean_as_pseudo_gradient():
    # g = (1 * 1 + 3 * 5) / 4 = 4, so this is Yogi's first step above
    opt = FedYogi(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    new = opt.aggregate(_zeros(), [_c("a", [1.0], samples=1), _c("b", [5.0], samples=3)])
    np.testing.assert_allclose(new["w"], [0.5])


def test_server_lr_scales_every_step():
    np.testing.assert_allclose(_round(Median(), [[2.0], [4.0], [9.0]], server_lr=0.5),
                               [2.0])
    opt = FedAdam(eta=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    np.testing.assert_allclose(_round(opt, [[1.0]], server_lr=0.5), [0.125])


def test_optimizer_state_resets_when_the_model_changes_size():
    opt = FedAvgM(eta=1.0, momentum=0.5)
    _round(opt, [[1.0]])
    np.testing.assert_allclose(_round(opt, [[1.0, 1.0]]), [1.0, 1.0])  # no old momentum


# ------------------------------------------------------------ config and registry
def test_every_name_builds_with_defaults():
    assert set(STRATEGIES) == {"fedavg", *ROBUST, *OPTIMIZERS}
    for name in STRATEGIES:
        strategy = strategy_by_name(name)
        assert _round(strategy, [[1.0], [1.0], [1.0]]).shape == (1,)


def test_config_reaches_the_strategy():
    krum = build_strategy(StrategyConfig(name="multi_krum", byzantine=2, multi_krum=3))
    assert krum == Krum(byzantine=2, m=3)
    assert build_strategy(StrategyConfig(name="trimmed_mean", trim_fraction=0.1)).beta == 0.1
    adam = build_strategy(StrategyConfig(name="fedadam"))
    assert adam.config.eta == 0.03 and adam.config.tau == 1e-3
    avgm = build_strategy(StrategyConfig(name="fedavgm", eta=0.5, momentum=0.8))
    assert (avgm.config.rule, avgm.config.eta, avgm.config.beta1) == ("momentum", 0.5, 0.8)


@pytest.mark.parametrize("fields", [
    {"name": "krum-42"}, {"trim_fraction": 0.5}, {"trim_fraction": -0.1},
    {"byzantine": -1}, {"multi_krum": 0}, {"norm_bound": 0.0},
    {"norm_bound": float("inf")}, {"eta": -1.0}, {"beta1": 1.0}, {"beta2": -0.1},
    {"momentum": 1.0}, {"tau": 0.0}, {"tau": float("nan")},
])
def test_config_refuses_bad_values(fields):
    with pytest.raises(ValueError):
        StrategyConfig(**fields)


def test_config_reads_from_a_toml_table():
    config = from_table(StrategyConfig, {"name": "multi_krum", "byzantine": 2,
                                         "multi_krum": 6, "eta": 1}, "[strategy]")
    assert (config.name, config.byzantine, config.multi_krum, config.eta) == (
        "multi_krum", 2, 6, 1.0)
    with pytest.raises(ConfigError, match="trim_fraction"):
        from_table(StrategyConfig, {"trim_fraction": 0.7}, "[strategy]")


# ------------------------------------------------------------ refusals and finiteness
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_refuses_an_empty_round(name):
    with pytest.raises(ValueError):
        strategy_by_name(name).aggregate(_zeros(), [])


@pytest.mark.parametrize("name", [*ROBUST, *OPTIMIZERS])
def test_a_delta_of_another_model_is_refused(name):
    wrong = Contribution("a", {"w": np.zeros(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="does not match"):
        strategy_by_name(name).aggregate(_zeros(1), [wrong])


@pytest.mark.parametrize("name", [*ROBUST, *OPTIMIZERS])
@pytest.mark.parametrize("values", [
    [[0.0, 0.0]] * 5,                                   # nothing moved: 0/0 in clipping
    [[1e30, -1e30]] * 4 + [[-1e30, 1e30]],             # huge but finite
    [[1e-38, 0.0], [0.0, 1e-38], [0.0, 0.0], [1e-38, 1e-38], [0.0, 0.0]],  # subnormal
])
def test_finite_inputs_give_finite_models(name, values):
    strategy = strategy_by_name(name)
    x = _zeros(2)
    for _ in range(3):
        x = strategy.aggregate(x, [_c(f"d{i}", v) for i, v in enumerate(values)])
        assert np.isfinite(x["w"]).all()


@pytest.mark.parametrize("name", [*ROBUST, *OPTIMIZERS])
def test_a_nan_update_is_dropped_not_spread(name, caplog):
    contributions = [_c(f"d{i}", [1.0]) for i in range(5)] + [_c("evil", [float("nan")])]
    with caplog.at_level(logging.WARNING):
        new = strategy_by_name(name).aggregate(_zeros(), contributions)
    assert np.isfinite(new["w"]).all() and "evil" in caplog.text


def test_an_overflowing_model_is_refused_and_leaves_the_optimizer_alone():
    opt = FedAvgM(eta=1.0, momentum=0.5)
    big = {"w": np.array([3e38], np.float32)}
    with pytest.raises(ValueError, match="float32"):
        opt.aggregate(big, [_c("a", [3e38])])
    assert opt.m is None


# ------------------------------------------------------------ property
@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("seed", range(8))
def test_identical_honest_updates_come_back_unchanged(name, seed):
    # Prepare: n copies of one random update (n from 1 to 12, so Krum sometimes falls
    # back), random sample counts and a random starting model
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 13))
    update = {"a": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=5).astype(np.float32)}
    start = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in update.items()}
    contributions = [Contribution(f"d{i}", update, int(rng.integers(1, 100)))
                     for i in range(n)]
    # Execute
    new = build_strategy(StrategyConfig(name=name, byzantine=int(rng.integers(0, 3)))
                         ).aggregate(start, contributions)
    # Assert
    for k in update:
        np.testing.assert_allclose(new[k], start[k] + update[k], rtol=1e-6, atol=1e-6)


def test_plain_functions_refuse_nothing_to_aggregate():
    for fn in (aggregate_median, lambda u: aggregate_trimmed_mean(u, 0.1),
               lambda u: aggregate_krum(u, 0), clip_to_norm):
        with pytest.raises(ValueError):
            fn([])
