"""The [strategy] table: which aggregation rule, and its few knobs.

Every key has a default that works on the demo job; a key the chosen rule does not use is
still checked, so a typo'd value fails at start-up rather than when someone switches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aggregator.strategy.base import Strategy
from aggregator.strategy.contribution import WEIGHTINGS
from aggregator.strategy.registry import STRATEGIES


@dataclass
class StrategyConfig:
    name: str = "fedavg"  # a key of STRATEGIES (aggregator/strategy/registry.py)
    trim_fraction: float = 0.2  # trimmed_mean: share cut from each side, [0, 0.5)
    byzantine: int = 1  # krum, multi_krum: f, the attackers to tolerate (needs n > 2f + 2)
    multi_krum: int | None = None  # multi_krum: updates averaged; None (leave out): n - f
    norm_bound: float | None = None  # norm_bound: L2 bound; None (leave out): median norm
    eta: float | None = None  # server optimizers' rate; None: fedavgm 1.0, fedadam and
    #                           fedyogi 0.03, fedadagrad 0.1 (measured, docs/strategies.md)
    beta1: float = 0.9  # fedadam, fedyogi, fedadagrad: first-moment decay
    beta2: float = 0.99  # fedadam, fedyogi: second-moment decay
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: adaptivity (step = m / (sqrt v + tau))
    momentum: float = 0.9  # fedavgm: server momentum
    # the strategies that need every update (median, trimmed_mean, krum, multi_krum,
    # norm_bound): a version's updates must fit in this (aggregator/strategy/memory.py);
    # mean-based ones fold updates into one sum and take O(model) whatever the cohort
    memory_limit_mb: float = 1024.0
    # how much each update counts beyond its samples (aggregator/contribution.py):
    # "samples", "loss" (x local_loss^weighting_q) or "loss_improvement"; mean-based only
    weighting: str = "samples"
    weighting_q: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r}; known: {sorted(STRATEGIES)}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), not {self.trim_fraction}")
        if self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, not {self.byzantine}")
        if self.multi_krum is not None and self.multi_krum < 1:
            raise ValueError(f"multi_krum must be >= 1, not {self.multi_krum}")
        for key in ("norm_bound", "eta"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0, not {value}")
        for key in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), not {getattr(self, key)}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0, not {self.tau}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, "
                             f"not {self.weighting!r}")
        if self.weighting != "samples" and not STRATEGIES[self.name].mean_based:
            raise ValueError(f"weighting = {self.weighting!r} needs a mean-based strategy, "
                             f"not {self.name!r}")
        if not (math.isfinite(self.weighting_q) and 0 <= self.weighting_q <= 10):
            raise ValueError(f"weighting_q must be a number from 0 to 10, "
                             f"not {self.weighting_q}")
        if not (math.isfinite(self.memory_limit_mb) and self.memory_limit_mb > 0):
            raise ValueError(f"memory_limit_mb must be a finite number > 0, "
                             f"not {self.memory_limit_mb}")


def build_strategy(config: StrategyConfig) -> Strategy:
    """A fresh strategy (server optimizers start with empty moments)."""
    return STRATEGIES[config.name].build(config)
