"""DP-FedAvg as a Strategy wrapper: central DP at the aggregator, or the server's side of
distributed DP.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
https://arxiv.org/abs/1710.06963 (DP-FedAvg with a fixed denominator);
adaptive clipping after Andrew et al. 2021, https://arxiv.org/abs/1905.03871.

Central: clip each device's update to C, sum, divide by the expected cohort m (not by
the updates that came, and not weighted by sample counts: either would let one device
move the mean by more than C / m), add N(0, (z C / m)^2) per coordinate. The noisy mean
then goes to the inner strategy (FedAvg, or a server optimizer, which only
post-processes it) as one contribution.

Distributed: devices clip and add their share of the noise themselves
(`edge_client.shared.codecs.dp`); the server only sums and divides by m. The secure sum comes
with secure aggregation; until then the sum is a plain one over unmasked updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aggregator.privacy.clipping import l2_clip, next_clip
from aggregator.privacy.config import PrivacyConfig
from aggregator.privacy.dp_folding import ClippedSum, PlainSum
from aggregator.strategy.base import Contribution, Strategy
from aggregator.strategy.folding import model_size
from aggregator.strategy.stacking import Stacked, stack
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.tensors import unflatten_like

MEAN_ID = "dp-mean"  # the one contribution the inner strategy sees


@dataclass(frozen=True)
class DpRound:
    """What one private aggregation did, for the version's info and the anomaly flags."""

    clip: float  # C used this version
    devices: int  # distinct devices in the sum
    clipped: dict[str, float]  # device -> its norm before clipping (central only)
    median_norm: float  # of the devices' updates before clipping (central only; else 0)
    noise_std: float  # per coordinate, on the mean
    next_clip: float  # C for the next version (== clip unless adaptive)


@dataclass
class DpState:
    """Shared by the service's privacy hooks and the wrappers: what outlives a strategy
    switch from the dashboard (the clip, the next version's number, the last round)."""

    clip: float
    version: int  # the version the next aggregation makes (seeds its noise)
    last: DpRound | None = field(default=None)


def per_device(stacked: Stacked) -> tuple[list[str], np.ndarray]:
    """One row per device: the staleness-scaled sum of its updates in this aggregation.

    In async mode a device can have a stale and a fresh update in one buffer; summing
    them before the clip keeps its whole say in one version within C.
    """
    factors = np.array([c.staleness_factor for c in stacked.contributions], np.float64)
    if not np.all(np.isfinite(factors)) or factors.min() < 0 or factors.max() > 1:
        raise ValueError("staleness factors must be in [0, 1] under DP")
    devices = sorted({c.device_id for c in stacked.contributions})
    index = {d: i for i, d in enumerate(devices)}
    rows = np.zeros((len(devices), stacked.rows.shape[1]), np.float64)
    for c, row, f in zip(stacked.contributions, stacked.rows, factors, strict=True):
        rows[index[c.device_id]] += f * row
    return devices, rows


def noise_rng(seed: int | None, version: int) -> np.random.Generator:
    """The version's noise generator: from (seed, version) when a seed is configured
    (repeatable runs), else fresh OS entropy (noise nobody can redraw)."""
    return np.random.default_rng() if seed is None else np.random.default_rng([seed, version])


class CentralDp:
    """Clip, average over the expected cohort, add Gaussian noise; then `inner`."""

    def __init__(self, inner: Strategy, config: PrivacyConfig, cohort: int,
                 state: DpState) -> None:
        if cohort < 1:
            raise ValueError(f"the expected cohort must be >= 1, not {cohort}")
        self.inner = inner
        self.config = config
        self.cohort = cohort
        self.state = state
        self.update_noise_multiplier = config.update_noise_multiplier(cohort)

    def __repr__(self) -> str:
        return f"CentralDp({self.inner!r}, z={self.config.noise_multiplier}, m={self.cohort})"

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        devices, rows = per_device(stack(global_weights, contributions))
        clip = self.state.clip
        clipped = l2_clip(rows, clip)
        rng = noise_rng(self.config.seed, self.state.version)
        std = self.update_noise_multiplier * clip / self.cohort
        mean = clipped.rows.sum(axis=0) / self.cohort + rng.normal(0.0, std, rows.shape[1])
        following = clip
        if self.config.adaptive:
            c = self.config
            following = next_clip(clip, clipped.unclipped, self.cohort, c.target_quantile,
                                  c.clip_lr, c.count_stddev(self.cohort), rng,
                                  devices=len(devices))
        proposed = self.inner.aggregate(global_weights, [_as_contribution(mean, global_weights)],
                                        server_lr)
        over = clipped.norms > clip
        self.state.last = DpRound(
            clip=clip, devices=len(devices),
            clipped={d: float(n) for d, n, o in zip(devices, clipped.norms, over, strict=True)
                     if o},
            median_norm=float(np.median(clipped.norms)), noise_std=std, next_clip=following)
        return proposed

    def start(self, global_weights: Weights,
              repeated: frozenset[str] = frozenset()) -> ClippedSum:
        """A running sum clipped per device at fold time (aggregator/privacy/dp_folding.py);
        `repeated`: devices known to have more than one update in it."""
        return ClippedSum(model_size(global_weights), self.state.clip, repeated,
                          self.apply_clipped)

    def apply_clipped(self, global_weights: Weights, summed: ClippedSum,
                      server_lr: float) -> Weights:
        """`aggregate` from a folded, clipped sum: the same noise from the same generator,
        the same adaptive clip step and the same record of the round."""
        clip = summed.clip
        norms = summed.norms
        rng = noise_rng(self.config.seed, self.state.version)
        std = self.update_noise_multiplier * clip / self.cohort
        mean = summed.total / self.cohort + rng.normal(0.0, std, summed.size)
        following = clip
        if self.config.adaptive:
            c = self.config
            unclipped = sum(1 for n in norms.values() if n <= clip)
            following = next_clip(clip, unclipped, self.cohort, c.target_quantile,
                                  c.clip_lr, c.count_stddev(self.cohort), rng,
                                  devices=len(norms))
        proposed = self.inner.aggregate(global_weights, [_as_contribution(mean, global_weights)],
                                        server_lr)
        self.state.last = DpRound(
            clip=clip, devices=len(norms),
            clipped={d: n for d, n in sorted(norms.items()) if n > clip},
            median_norm=float(np.median(list(norms.values()))), noise_std=std,
            next_clip=following)
        return proposed


class DistributedDp:
    """The server's part of distributed DP: the sum of the devices' clipped, noised
    updates over the expected cohort, then `inner`. It cannot clip: under secure
    aggregation it never sees a single update."""

    def __init__(self, inner: Strategy, config: PrivacyConfig, cohort: int,
                 state: DpState) -> None:
        if cohort < 1:
            raise ValueError(f"the expected cohort must be >= 1, not {cohort}")
        self.inner = inner
        self.config = config
        self.cohort = cohort
        self.state = state

    def __repr__(self) -> str:
        return f"DistributedDp({self.inner!r}, z={self.config.noise_multiplier}, m={self.cohort})"

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        """The plain sum of unmasked updates (until secure aggregation supplies it)."""
        stacked = stack(global_weights, contributions)
        devices = {c.device_id for c in stacked.contributions}
        if len(devices) != len(stacked.contributions):
            raise ValueError("distributed DP takes one update per device per version")
        return self.aggregate_sum(global_weights, stacked.rows.sum(axis=0), len(devices),
                                  server_lr)

    def start(self, global_weights: Weights,
              repeated: frozenset[str] = frozenset()) -> PlainSum:
        """A running plain sum (`repeated` is for the central wrapper's clip)."""
        return PlainSum(model_size(global_weights), self.aggregate_sum)

    def aggregate_sum(self, global_weights: Weights, total: np.ndarray, devices: int,
                      server_lr: float = 1.0) -> Weights:
        """The next model from the sum of `devices` clipped, noised updates (flat, in
        sorted-name order): what a secure aggregation round yields."""
        if devices < 1:
            raise ValueError("no updates in the sum")
        mean = np.asarray(total, np.float64) / self.cohort
        proposed = self.inner.aggregate(global_weights, [_as_contribution(mean, global_weights)],
                                        server_lr)
        clip = self.state.clip
        std = self.config.noise_multiplier * clip * np.sqrt(devices / self.cohort) / self.cohort
        self.state.last = DpRound(clip=clip, devices=devices, clipped={}, median_norm=0.0,
                                  noise_std=float(std), next_clip=clip)
        return proposed


def _as_contribution(mean: np.ndarray, like: Weights) -> Contribution:
    """The private mean as the single update the inner strategy averages (weight 1)."""
    return Contribution(MEAN_ID, unflatten_like(mean, like), samples=1)
