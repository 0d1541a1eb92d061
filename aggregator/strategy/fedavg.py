"""FedAvg: the sample-weighted mean of updates.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from aggregator.strategy.base import Contribution, weighted_mean
from edge_client.shared.protocol import Weights


class FedAvg:
    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        mean = weighted_mean(contributions)
        return {name: (w + server_lr * mean[name]).astype(w.dtype)
                for name, w in global_weights.items()}
