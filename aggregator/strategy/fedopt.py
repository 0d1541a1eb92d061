"""Server optimizers: the weighted mean delta as a pseudo-gradient for SGD with momentum,
Adam, Yogi or Adagrad on the server. One rule, four settings.

Reddi et al. 2021, "Adaptive Federated Optimization", https://arxiv.org/abs/2003.00295
(Algorithm 2: FedAdagrad, FedYogi, FedAdam); FedAvgM after Hsu et al. 2019, "Measuring
the Effects of Non-Identical Data Distribution for Federated Visual Classification",
https://arxiv.org/abs/1909.06335
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from aggregator.strategy.base import Contribution
from aggregator.strategy.folding import MeanSum, model_size
from aggregator.strategy.stacking import apply_step, stack
from edge_client.shared.protocol import Weights

Rule = Literal["momentum", "adam", "yogi", "adagrad"]
RULES: tuple[str, ...] = ("momentum", "adam", "yogi", "adagrad")


@dataclass(frozen=True)
class FedOptConfig:
    """eta: the server rate; beta1: first-moment (momentum) decay; beta2: second-moment
    decay (adam, yogi); tau: adaptivity, keeps steps finite where v is tiny."""

    rule: Rule = "adam"
    eta: float = 0.03
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {self.rule!r}")
        if not (np.isfinite(self.eta) and self.eta > 0):
            raise ValueError(f"eta must be a finite number > 0, not {self.eta}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1)")
        if not (np.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0, not {self.tau}")


def first_moment(m: np.ndarray, g: np.ndarray, beta1: float, rule: str) -> np.ndarray:
    """Heavy-ball velocity for FedAvgM (beta1 m + g, so the steady step is g / (1 -
    beta1)); Reddi's exponential average (beta1 m + (1 - beta1) g) for the rest."""
    if rule == "momentum":
        return beta1 * m + g
    return beta1 * m + (1.0 - beta1) * g


def second_moment(v: np.ndarray, g: np.ndarray, beta2: float, rule: str) -> np.ndarray:
    """Adagrad sums g^2; Adam averages it; Yogi moves v towards g^2 by a fixed share of
    g^2, so v grows as fast as Adam's but shrinks slower (no sudden large steps)."""
    g2 = g * g
    if rule == "adagrad":
        return v + g2
    if rule == "adam":
        return beta2 * v + (1.0 - beta2) * g2
    if rule == "yogi":
        return v - (1.0 - beta2) * g2 * np.sign(v - g2)
    raise ValueError(f"no second moment for rule {rule!r}")


def server_step(m: np.ndarray, v: np.ndarray | None, config: FedOptConfig) -> np.ndarray:
    """eta m for momentum; eta m / (sqrt(v) + tau) for the adaptive rules. v >= 0 and
    tau > 0, so the division is always finite."""
    if v is None:
        return config.eta * m
    return config.eta * m / (np.sqrt(v) + config.tau)


class FedOpt:
    """Keeps m and v (one float64 vector each) between rounds in this instance.

    They are not persisted: after a restart, or a strategy switch from the dashboard,
    the moments start again from zero (v from tau^2, as Reddi et al. start it). If the
    model's size changes, they reset too. A round that would overflow the model raises
    before the moments change.
    """

    def __init__(self, config: FedOptConfig | None = None) -> None:
        self.config = config or FedOptConfig()
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"FedOpt({self.config})"

    def reset(self) -> None:
        self.m = self.v = None

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        return self.apply_mean(global_weights, stack(global_weights, contributions)
                               .weighted_mean(), server_lr)

    def start(self, global_weights: Weights,
              repeated: frozenset[str] = frozenset()) -> MeanSum:
        """A running weighted sum; its mean is the round's pseudo-gradient."""
        return MeanSum(model_size(global_weights), self.apply_mean)

    def apply_mean(self, global_weights: Weights, g: np.ndarray, server_lr: float) -> Weights:
        """One optimizer step with the pseudo-gradient `g` (flat float64)."""
        c = self.config
        m, v = self.m, self.v
        if m is None or m.shape != g.shape:
            m = np.zeros_like(g)
            v = None if c.rule == "momentum" else np.full_like(g, c.tau * c.tau)
        m = first_moment(m, g, c.beta1, c.rule)
        v = None if v is None else second_moment(v, g, c.beta2, c.rule)
        new = apply_step(global_weights, server_step(m, v, c), server_lr)
        self.m, self.v = m, v
        return new


# Server rates measured on the demo job (docs/strategies.md): Reddi et al.'s grid value
# 10^-1.5 for Adam and Yogi, 10^-1 for Adagrad; FedAvgM takes FedAvg's full step.
DEFAULT_ETA: dict[str, float] = {"momentum": 1.0, "adam": 0.03, "yogi": 0.03, "adagrad": 0.1}


# Thin variants, as tinygrad's Adam is its LAMB with adam=True.
def FedAvgM(eta: float = DEFAULT_ETA["momentum"], momentum: float = 0.9) -> FedOpt:
    return FedOpt(FedOptConfig("momentum", eta=eta, beta1=momentum))


def FedAdam(eta: float = DEFAULT_ETA["adam"], beta1: float = 0.9, beta2: float = 0.99,
            tau: float = 1e-3) -> FedOpt:
    return FedOpt(FedOptConfig("adam", eta, beta1, beta2, tau))


def FedYogi(eta: float = DEFAULT_ETA["yogi"], beta1: float = 0.9, beta2: float = 0.99,
            tau: float = 1e-3) -> FedOpt:
    return FedOpt(FedOptConfig("yogi", eta, beta1, beta2, tau))


def FedAdagrad(eta: float = DEFAULT_ETA["adagrad"], beta1: float = 0.9,
               tau: float = 1e-3) -> FedOpt:
    return FedOpt(FedOptConfig("adagrad", eta, beta1, tau=tau))
