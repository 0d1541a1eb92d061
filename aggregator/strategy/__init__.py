"""Aggregation strategies, chosen in the aggregator config."""

from aggregator.strategy.base import Contribution, Strategy, weighted_mean
from aggregator.strategy.fedavg import FedAvg

STRATEGIES: dict[str, type] = {"fedavg": FedAvg}


def strategy_by_name(name: str) -> Strategy:
    """A strategy from its config name; ValueError lists the known ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "Contribution", "FedAvg", "Strategy", "strategy_by_name",
           "weighted_mean"]
