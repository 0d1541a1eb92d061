"""The [privacy] table: differential privacy off, central, or distributed (docs/privacy.md).

Each key is checked on its own here, and against the rest of the aggregator's config in
`check_privacy` (the strategy, the mode, the uplink codec, the cohort size), so that a
combination whose guarantee would not hold fails at start-up with the key named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregator.strategy.registry import MEAN_BASED, STRATEGIES

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig

MODES = ("off", "central", "distributed")
# Strategies a DP mean can feed: the mean-based ones (aggregator/strategy/registry.py).
# FedAvg takes it as it is, and the server optimizers only post-process it (which keeps
# the guarantee); a robust rule's output is not the mean the noise is calibrated to.
PRIVATE_STRATEGIES = MEAN_BASED
DEFAULT_DELTA = 1e-5


@dataclass
class PrivacyConfig:
    mode: str = "off"  # "off" | "central" | "distributed"
    clip: float | str = 1.0  # L2 bound C on each device's update, or "adaptive"
    initial_clip: float = 0.1  # adaptive: C before the first version
    target_quantile: float = 0.5  # adaptive: the share of updates C should leave unclipped
    clip_lr: float = 0.2  # adaptive: eta_C in C <- C * exp(-eta_C * (b - gamma))
    clip_count_stddev: float | None = None  # adaptive: noise on the unclipped count;
    #                                         None (leave out): expected cohort / 20
    noise_multiplier: float = 1.0  # z: noise std over sensitivity, for the accountant
    delta: float | None = None  # None (leave out): min(1e-5, 1 / population), or 1e-5
    target_epsilon: float = 0.0  # stop training before epsilon would pass this; 0: no budget
    population: int = 0  # devices the cohort is sampled from; 0: those available then
    seed: int | None = None  # noise seed (tests, benchmarks); None: fresh OS entropy

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"privacy.mode must be one of {MODES}, not {self.mode!r}")
        if isinstance(self.clip, str):
            if self.clip != "adaptive":
                raise ValueError(f"privacy.clip must be a number > 0 or 'adaptive', "
                                 f"not {self.clip!r}")
        elif not _positive(self.clip):
            raise ValueError(f"privacy.clip must be a finite number > 0 or 'adaptive', "
                             f"not {self.clip}")
        for key in ("initial_clip", "clip_lr", "noise_multiplier"):
            if not _positive(getattr(self, key)):
                raise ValueError(f"privacy.{key} must be a finite number > 0, "
                                 f"not {getattr(self, key)}")
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"privacy.target_quantile must be in (0, 1), "
                             f"not {self.target_quantile}")
        if self.clip_count_stddev is not None and not _positive(self.clip_count_stddev):
            raise ValueError(f"privacy.clip_count_stddev must be a finite number > 0, "
                             f"not {self.clip_count_stddev}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1), not {self.delta}")
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon >= 0):
            raise ValueError(f"privacy.target_epsilon must be a finite number >= 0 (0: no "
                             f"budget), not {self.target_epsilon}")
        if self.population < 0:
            raise ValueError(f"privacy.population must be >= 0 (0: the devices available "
                             f"at each round), not {self.population}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"privacy.seed must be >= 0, not {self.seed}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def adaptive(self) -> bool:
        return self.clip == "adaptive"

    @property
    def start_clip(self) -> float:
        return self.initial_clip if self.adaptive else float(self.clip)

    def resolved_delta(self) -> float:
        """delta as configured, else 1e-5, or 1 / population when that is smaller."""
        if self.delta is not None:
            return self.delta
        if self.population > 0:
            return min(DEFAULT_DELTA, 1.0 / self.population)
        return DEFAULT_DELTA

    def count_stddev(self, cohort: int) -> float:
        """sigma_b: as configured, else cohort / 20 (Andrew et al.'s recommendation)."""
        return self.clip_count_stddev if self.clip_count_stddev is not None else cohort / 20

    def update_noise_multiplier(self, cohort: int) -> float:
        """The noise multiplier of the update sum, z_delta.

        With adaptive clipping the unclipped count is a second Gaussian query on the same
        devices, with sensitivity 1/2 (bits centred on 0), so noise multiplier 2 sigma_b.
        Both together are one Gaussian mechanism with z^-2 = z_delta^-2 + (2 sigma_b)^-2
        (Andrew et al. 2021, Theorem 1): z stays what the accountant uses, and the update
        gets a little more noise to pay for the count.
        """
        z = self.noise_multiplier
        if not self.adaptive:
            return z
        count_z = 2.0 * self.count_stddev(cohort)
        if count_z <= z:
            raise ValueError(
                f"privacy.clip_count_stddev: adaptive clipping with noise_multiplier {z} needs "
                f"2 * clip_count_stddev > {z}, and it is {count_z:g} (the default is the "
                f"cohort of {cohort} / 20); raise clip_count_stddev or use a fixed clip")
        return (z ** -2 - count_z ** -2) ** -0.5


def expected_cohort(config: AggregatorConfig) -> int:
    """m, the divisor of the DP mean: the updates one version is made from when all come."""
    return config.sync.target_updates if config.mode == "sync" else config.async_.buffer_size


def check_privacy(config: AggregatorConfig) -> None:
    """Refuse [privacy] settings whose guarantee the rest of the config would break."""
    p = config.privacy
    if not p.enabled:
        return
    if not STRATEGIES[config.strategy.name].mean_based:
        raise ValueError(
            f"privacy.mode = {p.mode!r} needs strategy.name to be one of "
            f"{PRIVATE_STRATEGIES}, not {config.strategy.name!r}: the noise is calibrated "
            f"to the clipped mean, and a robust rule's output is not that mean")
    p.update_noise_multiplier(expected_cohort(config))  # raises when adaptive cannot work
    if p.mode != "distributed":
        return
    if config.mode != "sync":
        raise ValueError("privacy.mode = 'distributed' needs mode = 'sync': in async mode one "
                         "device can send two updates into one version, and the server "
                         "cannot see (to clip) a sum it does not decrypt")
    if p.adaptive:
        raise ValueError("privacy.clip = 'adaptive' works with mode = 'central' only: the "
                         "distributed mode would need the clipped count in the secure sum")
    uplink = config.uplink
    if uplink is not None and (uplink.sparsify != "none" or uplink.quantize != "f32"):
        raise ValueError("privacy.mode = 'distributed' needs dense float32 updates ([uplink] "
                         "left out, or sparsify = 'none' and quantize = 'f32'): sparsifying "
                         "or rounding each device's noisy update is not post-processing of "
                         "the noisy sum")


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
