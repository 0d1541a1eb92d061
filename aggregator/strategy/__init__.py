"""Aggregation strategies, chosen in the aggregator config."""

from aggregator.strategy.base import Contribution, Strategy, weighted_mean
from aggregator.strategy.fedavg import FedAvg

__all__ = ["Contribution", "FedAvg", "Strategy", "weighted_mean"]
