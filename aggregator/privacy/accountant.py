"""The privacy accountant: epsilon at delta after the versions made so far.

Each model version is one Poisson-sampled Gaussian mechanism: a device takes part with
probability q (the sampling rate) and the mean carries Gaussian noise of multiplier z.
Google's dp-accounting composes them with the RDP accountant (Mironov 2017; Mironov,
Talwar, Zhang 2019) and converts to (epsilon, delta).

Nothing is kept but the list of (q, z) steps, and every stored version's info holds its
own, so a restarted aggregator recomputes the same epsilon from the store.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Any


@dataclass(frozen=True)
class Step:
    """One model version as the accountant sees it."""

    sampling_rate: float  # q in (0, 1]
    noise_multiplier: float  # z > 0

    def __post_init__(self) -> None:
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], not {self.sampling_rate}")
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise multiplier must be > 0, not {self.noise_multiplier}")


def dp_event(steps: Sequence[Step]) -> Any:
    """The steps as one DpEvent; runs of equal steps become one SelfComposedDpEvent."""
    from dp_accounting import dp_event as events  # lazy: pulls scipy (over a second)

    runs = [events.SelfComposedDpEvent(
        events.PoissonSampledDpEvent(step.sampling_rate,
                                     events.GaussianDpEvent(step.noise_multiplier)),
        sum(1 for _ in run)) for step, run in groupby(steps)]
    return events.ComposedDpEvent(runs)


def epsilon(steps: Sequence[Step], delta: float) -> float:
    """Epsilon at `delta` after `steps`; 0.0 before any."""
    if not steps:
        return 0.0
    accountant = _rdp_accountant()
    with _quiet_absl():
        accountant.compose(dp_event(steps))
        return float(accountant.get_epsilon(delta))


class Accountant:
    """The steps taken so far, and what one more would cost.

    One RdpAccountant is kept and each new step composed into it once (a sampled
    Gaussian's RDP takes up to ~0.1 s to compute), so a long run does not recompute its
    whole history every version.
    """

    def __init__(self, delta: float, steps: Iterable[Step] = ()) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), not {delta}")
        self.delta = delta
        self.steps: list[Step] = list(steps)
        self._rdp: Any = None  # built on first use: dp-accounting is imported lazily

    @classmethod
    def from_history(cls, history: Iterable[dict[str, Any]], delta: float) -> Accountant:
        """The steps recorded in stored versions' info (`dp_sampling_rate`,
        `dp_noise_multiplier`); versions made without DP cost nothing here."""
        return cls(delta, [Step(h["dp_sampling_rate"], h["dp_noise_multiplier"])
                           for h in history if "dp_sampling_rate" in h])

    def record(self, step: Step) -> float:
        """Add a version; returns epsilon after it."""
        with _quiet_absl():
            self._composed().compose(dp_event([step]))
        self.steps.append(step)
        return self.epsilon()

    def epsilon(self) -> float:
        if not self.steps:
            return 0.0
        return float(self._composed().get_epsilon(self.delta))

    def epsilon_after(self, step: Step) -> float:
        """Epsilon if one more version with `step` were made."""
        trial = copy.deepcopy(self._composed())
        with _quiet_absl():
            trial.compose(dp_event([step]))
        return float(trial.get_epsilon(self.delta))

    def _composed(self) -> Any:
        if self._rdp is None:
            self._rdp = _rdp_accountant()
            if self.steps:
                with _quiet_absl():
                    self._rdp.compose(dp_event(self.steps))
        return self._rdp


def _rdp_accountant() -> Any:
    from dp_accounting import rdp

    return rdp.RdpAccountant()  # its default orders, as dp-accounting's own examples


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs a warning for each fractional RDP order whose series does not
    converge (common for q > 0.3); the order is left out and epsilon stays valid, so
    those lines would only flood the aggregator's log."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)
