"""FedAvg: the sample-weighted mean of updates.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", https://arxiv.org/abs/1602.05629

The service folds each update into a running sum as it arrives (`start`, see
aggregator/strategy/folding.py); `aggregate` takes a whole list, for callers that have
one.
"""

from __future__ import annotations

import numpy as np

from aggregator.strategy.base import Contribution, weighted_mean
from aggregator.strategy.folding import MeanSum, model_size
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.tensors import unflatten_like


class FedAvg:
    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        mean = weighted_mean(contributions)
        return _step(global_weights, mean, server_lr)

    def start(self, global_weights: Weights,
              repeated: frozenset[str] = frozenset()) -> MeanSum:
        return MeanSum(model_size(global_weights), self.apply_mean)

    def apply_mean(self, global_weights: Weights, mean: np.ndarray,
                   server_lr: float) -> Weights:
        """global + server_lr * mean, the flat float64 mean rounded to float32 first (as
        `weighted_mean` returns it)."""
        return _step(global_weights, unflatten_like(mean.astype(np.float32), global_weights),
                     server_lr)


def _step(global_weights: Weights, mean: Weights, server_lr: float) -> Weights:
    return {name: (w + server_lr * mean[name]).astype(w.dtype)
            for name, w in global_weights.items()}
