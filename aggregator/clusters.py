"""[clusters]: k global models (IFCA, Ghosh et al. 2020, https://arxiv.org/abs/2006.04088).

The k model lines travel as one stacked model (edge_client/shared/clusters.py): the
store, the downlink and the manifests are those of a plain federation. Each device trains
the cluster whose model has the lowest loss on its data and reports it (`cluster` in its
update's metrics); `ClusteredSum` averages each cluster's part of the model over that
cluster's updates only, so a cluster no device chose stays as it was. The cluster models
start apart: cluster 0 is the initial model; each other one flips the sign of every
weight at random (a model of the same scale, as different as another random start) and
adds seeded noise of `spread` times the tensor's standard deviation. Near copies of one
start made every device choose cluster 0 in our runs (digits by label groups), and the
other clusters never trained; sign-flipped starts split the groups in 3 of 3 seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aggregator.strategy.folding import Accumulator, Arrival, FlatUpdate, MeanSum
from edge_client.shared.clusters import MAX_CLUSTERS, cluster_of_coordinates, stack, unstack
from edge_client.shared.protocol import Weights

log = logging.getLogger("aggregator.service")


@dataclass
class ClustersConfig:
    """[clusters]: k = 1 (the default) is a plain federation."""

    k: int = 1
    spread: float = 0.1  # the other clusters' start: noise of this many tensor std devs

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= MAX_CLUSTERS:
            raise ValueError(f"clusters.k must be a whole number from 1 to {MAX_CLUSTERS}, "
                             f"not {self.k!r}")
        if not (np.isfinite(self.spread) and self.spread >= 0):
            raise ValueError(f"clusters.spread must be a number >= 0, not {self.spread}")

    @property
    def on(self) -> bool:
        return self.k > 1


def initial_clusters(weights: Weights, config: ClustersConfig, seed: int) -> Weights:
    """The stacked version 0: cluster 0 is `weights`, the others sign-flipped, seeded."""
    rng = np.random.default_rng((seed, 19))
    models = [weights]
    for _ in range(1, config.k):
        models.append({name: (w * rng.choice(np.array([-1.0, 1.0]), w.shape)
                               + config.spread * float(np.std(w) or 0.01)
                               * rng.standard_normal(w.shape)).astype(w.dtype)
                       for name, w in weights.items()})
    return stack(models)


class ClusteredSum:
    """Per-cluster weighted means over the stacked layout: an update adds only into its
    cluster's coordinates (`Arrival.group`), and each part is divided by its own
    cluster's samples; the inner running sum's `apply` (FedAvg's step, a server
    optimizer's) turns the mean into the next model."""

    def __init__(self, inner: MeanSum, weights: Weights, k: int) -> None:
        self.apply = inner.apply
        self.owner = cluster_of_coordinates(weights)
        self.k = k
        self.total = np.zeros(self.owner.size, np.float64)
        self.samples = np.zeros(k, np.float64)
        self.folded = 0

    def fold(self, arrival: Arrival, update: FlatUpdate) -> None:
        c = arrival.group
        if c is None or not 0 <= c < self.k:
            log.warning("aggregator: an update from %s names no cluster of %d; left out",
                        arrival.device_id, self.k)
            return
        if not update.finite() or arrival.samples <= 0:
            log.warning("strategy: dropped an update with NaN or inf values, or no "
                        "samples: %s", arrival.device_id)
            return
        weight = float(arrival.samples) * arrival.staleness_factor
        mine = self.owner == c
        self.total[mine] += weight * update.dense()[mine].astype(np.float64)
        self.samples[c] += arrival.samples
        self.folded += 1

    def finish(self, global_weights: Weights, server_lr: float) -> Weights:
        if self.folded == 0:
            raise ValueError("no contribution has finite values")
        per_coordinate = self.samples[self.owner]
        mean = np.divide(self.total, per_coordinate, out=np.zeros_like(self.total),
                         where=per_coordinate > 0)
        return self.apply(global_weights, mean, server_lr)


def evaluate_clusters(evaluate: Callable[[Weights], dict[str, float]],
                      weights: Weights) -> dict[str, float]:
    """The gateway's `evaluate` on each cluster's model: `accuracy` (and every other
    figure) of the best cluster, and `cluster{c}_accuracy` for each. A test set that
    mixes every cluster's data favours none; the devices' own figures are in "personal"."""
    rows = [{k: float(v) for k, v in evaluate(model).items()} for model in unstack(weights)]
    best = max(range(len(rows)), key=lambda c: rows[c].get("accuracy", float("-inf")))
    out = dict(rows[best])
    out.update({f"cluster{c}_accuracy": row["accuracy"] for c, row in enumerate(rows)
                if "accuracy" in row})
    return out


def clustered(acc: Accumulator, weights: Weights, config: ClustersConfig) -> Accumulator:
    """The round's sum for a clustered federation (a mean-based strategy's); `acc` as it
    is otherwise."""
    if not config.on:
        return acc
    if not isinstance(acc, MeanSum):
        raise ValueError("clusters need a mean-based strategy without privacy wrappers "
                         "(fedavg or a server optimizer)")
    return ClusteredSum(acc, weights, config.k)
