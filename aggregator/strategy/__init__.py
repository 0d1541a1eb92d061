"""Aggregation strategies, chosen in the aggregator config ([strategy], see
docs/strategies.md)."""

from aggregator.strategy.base import Contribution, Strategy, mean_weights, weighted_mean
from aggregator.strategy.config import StrategyConfig, build_strategy
from aggregator.strategy.fedavg import FedAvg
from aggregator.strategy.fedopt import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedOpt,
    FedOptConfig,
    FedYogi,
)
from aggregator.strategy.krum import Krum
from aggregator.strategy.median import Median
from aggregator.strategy.norm_bound import NormBound
from aggregator.strategy.registry import (
    MEAN_BASED,
    STRATEGIES,
    StrategySpec,
    is_mean_based,
    strategy_spec,
)
from aggregator.strategy.trimmed_mean import TrimmedMean


def strategy_by_name(name: str) -> Strategy:
    """A strategy from its config name with default settings; ValueError lists the known
    ones."""
    return build_strategy(StrategyConfig(name=name))


__all__ = ["MEAN_BASED", "STRATEGIES", "Contribution", "FedAdagrad", "FedAdam", "FedAvg",
           "FedAvgM", "FedOpt", "FedOptConfig", "FedYogi", "Krum", "Median", "NormBound",
           "Strategy", "StrategyConfig", "StrategySpec", "TrimmedMean", "build_strategy",
           "is_mean_based", "mean_weights", "strategy_by_name", "strategy_spec",
           "weighted_mean"]
