"""The strategy registry is the one place that says what a strategy needs."""

from __future__ import annotations

import dataclasses

import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.strategy import (
    MEAN_BASED,
    STRATEGIES,
    StrategyConfig,
    build_strategy,
    is_mean_based,
    strategy_spec,
)


def test_the_mean_based_strategies_are_fedavg_and_the_server_optimizers() -> None:
    assert MEAN_BASED == ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
    for name, spec in STRATEGIES.items():
        built = build_strategy(StrategyConfig(name=name))
        assert isinstance(built, spec.kind) and is_mean_based(built) == spec.mean_based


def test_every_spec_names_real_settings() -> None:
    keys = {f.name for f in dataclasses.fields(StrategyConfig)} - {"name"}
    for spec in STRATEGIES.values():
        assert set(spec.settings) <= keys, spec.name


def test_krum_needs_more_than_two_f_plus_two_updates() -> None:
    krum = strategy_spec("krum")
    config = StrategyConfig(name="krum", byzantine=1)
    assert krum.min_updates(config) == 5 and krum.too_few(config, 5) is None
    assert krum.too_few(config, 4) == ("krum with byzantine = 1 needs more than 4 updates "
                                       "per version")
    assert strategy_spec("fedavg").too_few(StrategyConfig(), 1) is None
    with pytest.raises(ValueError, match="needs more than 4 updates"):
        AggregatorConfig(strategy=config, sync=SyncConfig(target_updates=4))


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'nope'; known: \\['fedadagrad'"):
        strategy_spec("nope")
