"""k global models in one: the clustered federation's model layout (IFCA).

The aggregator keeps k model lines as one model whose tensors are named
`cluster{c}/{name}`, so the store, the manifest, the downlink deltas and signatures carry
k models unchanged. A device splits it (`unstack`), trains the one that fits its data
best and sends a delta of the whole layout that is zero outside its cluster; the
aggregator averages each cluster's part over that cluster's devices
(aggregator/clusters.py). Ghosh et al. 2020, https://arxiv.org/abs/2006.04088
"""

from __future__ import annotations

import re

import numpy as np

from edge_client.shared.protocol.bounds import MAX_CLUSTERS
from edge_client.shared.weights import Weights

__all__ = ["MAX_CLUSTERS", "cluster_count", "cluster_name", "cluster_of_coordinates",
           "stack", "unstack", "with_cluster"]
_STACKED = re.compile(r"^cluster(\d+)/(.+)$")


def cluster_name(cluster: int, name: str) -> str:
    return f"cluster{cluster}/{name}"


def stack(models: list[Weights]) -> Weights:
    """One model holding `models` in turn (all with the same names and shapes)."""
    return {cluster_name(c, name): w for c, model in enumerate(models)
            for name, w in model.items()}


def cluster_count(weights: Weights) -> int:
    """How many clusters a model holds; 0 for a plain model."""
    found = {_STACKED.match(name) for name in weights}
    if not weights or None in found:
        return 0
    return 1 + max(int(m.group(1)) for m in found if m is not None)


def unstack(weights: Weights) -> list[Weights]:
    """The k models of a stacked model. ValueError: clusters with different layouts."""
    k = cluster_count(weights)
    if k == 0:
        raise ValueError("not a clustered model")
    models: list[Weights] = [{} for _ in range(k)]
    for name, w in weights.items():
        m = _STACKED.match(name)
        assert m is not None
        models[int(m.group(1))][m.group(2)] = w
    first = {n: w.shape for n, w in models[0].items()}
    if any({n: w.shape for n, w in m.items()} != first for m in models):
        raise ValueError("a clustered model whose clusters differ in names or shapes")
    return models


def with_cluster(stacked: Weights, cluster: int, model: Weights) -> Weights:
    """`stacked` with cluster `cluster`'s tensors replaced by `model`'s."""
    out = dict(stacked)
    for name, w in model.items():
        out[cluster_name(cluster, name)] = w
    return out


def cluster_of_coordinates(weights: Weights) -> np.ndarray:
    """The cluster of each coordinate of the flat layout (tensors in sorted-name order,
    as codecs and the running sum lay them out)."""
    parts = []
    for name in sorted(weights):
        m = _STACKED.match(name)
        if m is None:
            raise ValueError(f"tensor {name!r} belongs to no cluster")
        parts.append(np.full(int(np.size(weights[name])), int(m.group(1)), np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)
