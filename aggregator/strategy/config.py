"""The [strategy] table: which aggregation rule, and its few knobs.

Every key has a default that works on the demo job; a key the chosen rule does not use is
still checked, so a typo'd value fails at start-up rather than when someone switches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from aggregator.strategy.base import Strategy
from aggregator.strategy.fedavg import FedAvg
from aggregator.strategy.fedopt import DEFAULT_ETA, FedOpt, FedOptConfig, Rule
from aggregator.strategy.krum import Krum
from aggregator.strategy.median import Median
from aggregator.strategy.norm_bound import NormBound
from aggregator.strategy.trimmed_mean import TrimmedMean


@dataclass
class StrategyConfig:
    name: str = "fedavg"  # a key of STRATEGIES
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


def _server_optimizer(rule: Rule) -> Callable[[StrategyConfig], Strategy]:
    def build(c: StrategyConfig) -> Strategy:
        eta = DEFAULT_ETA[rule] if c.eta is None else c.eta
        beta1 = c.momentum if rule == "momentum" else c.beta1
        return FedOpt(FedOptConfig(rule, eta, beta1, c.beta2, c.tau))
    return build


STRATEGIES: dict[str, Callable[[StrategyConfig], Strategy]] = {
    "fedavg": lambda c: FedAvg(),
    "median": lambda c: Median(),
    "trimmed_mean": lambda c: TrimmedMean(c.trim_fraction),
    "krum": lambda c: Krum(c.byzantine, 1),
    "multi_krum": lambda c: Krum(c.byzantine, c.multi_krum),
    "norm_bound": lambda c: NormBound(c.norm_bound),
    "fedavgm": _server_optimizer("momentum"),
    "fedadam": _server_optimizer("adam"),
    "fedyogi": _server_optimizer("yogi"),
    "fedadagrad": _server_optimizer("adagrad"),
}


def build_strategy(config: StrategyConfig) -> Strategy:
    """A fresh strategy (server optimizers start with empty moments)."""
    return STRATEGIES[config.name](config)
