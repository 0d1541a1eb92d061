"""The privacy accountant: epsilon at delta after the versions made so far.

Each model version is one Poisson-sampled Gaussian mechanism: a device takes part with
probability q (the sampling rate) and the mean carries Gaussian noise of multiplier z.
Google's dp-accounting composes them with the RDP accountant (Mironov 2017; Mironov,
Talwar, Zhang 2019) and converts to (epsilon, delta).

Nothing is kept but the list of (q, z) steps, and every stored version's info holds its
own, so a restarted aggregator recomputes the same epsilon from the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event(steps))
    return float(accountant.get_epsilon(delta))


class Accountant:
    """The steps taken so far, and what one more would cost."""

    def __init__(self, delta: float, steps: Iterable[Step] = ()) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), not {delta}")
        self.delta = delta
        self.steps: list[Step] = list(steps)

    @classmethod
    def from_history(cls, history: Iterable[dict[str, Any]], delta: float) -> Accountant:
        """The steps recorded in stored versions' info (`dp_sampling_rate`,
        `dp_noise_multiplier`); versions made without DP cost nothing here."""
        return cls(delta, [Step(h["dp_sampling_rate"], h["dp_noise_multiplier"])
                           for h in history if "dp_sampling_rate" in h])

    def record(self, step: Step) -> float:
        """Add a version; returns epsilon after it."""
        self.steps.append(step)
        return self.epsilon()

    def epsilon(self) -> float:
        return epsilon(self.steps, self.delta)

    def epsilon_after(self, step: Step) -> float:
        """Epsilon if one more version with `step` were made."""
        return epsilon([*self.steps, step], self.delta)
