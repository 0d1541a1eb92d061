"""Every aggregation strategy by its config name, with what the rest of the aggregator
needs to know of it: the one place that says whether a strategy is mean-based, how many
updates a version needs, and which [strategy] keys it reads.

To add a strategy: write its class (a file in this package), then add one `StrategySpec`
to `STRATEGIES` below and a row to docs/strategies.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregator.strategy.base import Strategy
from aggregator.strategy.fedavg import FedAvg
from aggregator.strategy.fedopt import DEFAULT_ETA, FedOpt, FedOptConfig, Rule
from aggregator.strategy.krum import Krum
from aggregator.strategy.median import Median
from aggregator.strategy.norm_bound import NormBound
from aggregator.strategy.trimmed_mean import TrimmedMean

if TYPE_CHECKING:  # config.py imports this module; its builders only read the settings
    from aggregator.strategy.config import StrategyConfig


def _any_count(_: StrategyConfig) -> int:
    return 1


@dataclass(frozen=True)
class StrategySpec:
    """One strategy: how to build it, and the facts the config checks and round drivers
    ask of it."""

    name: str
    build: Callable[[StrategyConfig], Strategy]
    kind: type  # the class `build` makes
    # Aggregates nothing but the (sample-weighted) mean of the deltas, or post-processes
    # that mean: so it can run on a secure sum and on a DP mean. The robust rules need
    # each update and are not.
    mean_based: bool
    settings: tuple[str, ...] = ()  # the [strategy] keys it reads besides `name`
    min_updates: Callable[[StrategyConfig], int] = _any_count  # per version

    def too_few(self, config: StrategyConfig, updates: int) -> str | None:
        """Why `updates` per version cannot work with these settings, or None."""
        need = self.min_updates(config)
        if updates >= need:
            return None
        given = ", ".join(f"{key} = {getattr(config, key)}" for key in self.settings)
        return (f"{self.name} with {given} needs more than {need - 1} updates per version"
                if given else f"{self.name} needs at least {need} updates per version")


def _krum_min_updates(c: StrategyConfig) -> int:
    """Krum scores each update by its n - f - 2 nearest: it needs n > 2f + 2."""
    return 2 * c.byzantine + 3


def _server_optimizer(rule: Rule) -> Callable[[StrategyConfig], Strategy]:
    def build(c: StrategyConfig) -> Strategy:
        eta = DEFAULT_ETA[rule] if c.eta is None else c.eta
        beta1 = c.momentum if rule == "momentum" else c.beta1
        return FedOpt(FedOptConfig(rule, eta, beta1, c.beta2, c.tau))
    return build


_OPTIMIZER_SETTINGS = {"momentum": ("eta", "momentum"), "adam": ("eta", "beta1", "beta2", "tau"),
                       "yogi": ("eta", "beta1", "beta2", "tau"), "adagrad": ("eta", "beta1", "tau")}


def _optimizer(name: str, rule: Rule) -> StrategySpec:
    return StrategySpec(name, _server_optimizer(rule), FedOpt, mean_based=True,
                        settings=_OPTIMIZER_SETTINGS[rule])


def _fedavg(_: StrategyConfig) -> Strategy:
    return FedAvg()


def _median(_: StrategyConfig) -> Strategy:
    return Median()


def _trimmed_mean(c: StrategyConfig) -> Strategy:
    return TrimmedMean(c.trim_fraction)


def _krum(c: StrategyConfig) -> Strategy:
    return Krum(c.byzantine, 1)


def _multi_krum(c: StrategyConfig) -> Strategy:
    return Krum(c.byzantine, c.multi_krum)


def _norm_bound(c: StrategyConfig) -> Strategy:
    return NormBound(c.norm_bound)


STRATEGIES: dict[str, StrategySpec] = {spec.name: spec for spec in (
    StrategySpec("fedavg", _fedavg, FedAvg, mean_based=True),
    StrategySpec("median", _median, Median, mean_based=False),
    StrategySpec("trimmed_mean", _trimmed_mean, TrimmedMean, mean_based=False,
                 settings=("trim_fraction",)),
    StrategySpec("krum", _krum, Krum, mean_based=False, settings=("byzantine",),
                 min_updates=_krum_min_updates),
    StrategySpec("multi_krum", _multi_krum, Krum, mean_based=False,
                 settings=("byzantine", "multi_krum"), min_updates=_krum_min_updates),
    StrategySpec("norm_bound", _norm_bound, NormBound, mean_based=False,
                 settings=("norm_bound",)),
    _optimizer("fedavgm", "momentum"),
    _optimizer("fedadam", "adam"),
    _optimizer("fedyogi", "yogi"),
    _optimizer("fedadagrad", "adagrad"),
)}

# The strategies that run on a mean: under secure aggregation and differential privacy.
MEAN_BASED: tuple[str, ...] = tuple(name for name, s in STRATEGIES.items() if s.mean_based)


def strategy_spec(name: str) -> StrategySpec:
    """The spec of a strategy by config name; ValueError lists the known ones."""
    spec = STRATEGIES.get(name)
    if spec is None:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return spec


def is_mean_based(strategy: Strategy) -> bool:
    """Whether a built strategy (perhaps passed in by a caller, not named in a config)
    is one of the mean-based kinds."""
    return any(isinstance(strategy, s.kind) for s in STRATEGIES.values() if s.mean_based)
