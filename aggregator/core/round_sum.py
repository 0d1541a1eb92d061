"""The round's running sum, as the config asks for it: the strategy's own, per cluster
with [clusters], weighted by contribution with [strategy] weighting
(docs/heterogeneity.md)."""

from __future__ import annotations

from aggregator.clusters import clustered
from aggregator.config import AggregatorConfig
from aggregator.strategy import Strategy
from aggregator.strategy.contribution import weighted
from aggregator.strategy.folding import Accumulator, accumulator_for
from edge_client.shared.protocol import Weights


def round_sum(config: AggregatorConfig, strategy: Strategy, weights: Weights,
              repeated: frozenset[str]) -> Accumulator:
    """A fresh sum for a round from `weights` (`repeated`: as accumulator_for takes it)."""
    return weighted(clustered(accumulator_for(strategy, weights, repeated), weights,
                              config.clusters),
                    config.strategy.weighting, config.strategy.weighting_q)
