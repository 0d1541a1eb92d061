"""How evenly a version serves the fleet: the spread of per-device accuracy, and who
contributed how much (issue 18, the fairness view).

Each update carries `local_accuracy`: the model it trained from, measured on that
device's own data before training. A version's `Fairness` summarises the updates it
was made from; it is stored in the version's info under "fairness" (plain rounds only:
secure aggregation reveals no per-device metric, so secure versions have none).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

SECURE_NOTE = "secure aggregation does not reveal per-device metrics"


@dataclass
class FairnessConfig:
    """[fairness]: the accuracy a device should at least see (docs/configuration.md)."""

    accuracy_floor: float = 0.5  # devices whose local accuracy is below this are counted

    def __post_init__(self) -> None:
        if not (isinstance(self.accuracy_floor, int | float)
                and 0.0 <= self.accuracy_floor <= 1.0):
            raise ValueError(f"fairness.accuracy_floor must be a number from 0 to 1, "
                             f"not {self.accuracy_floor!r}")


class HasMetrics(Protocol):
    """An update as stored or received: who, how many samples, what it measured."""

    @property
    def device_id(self) -> str: ...

    @property
    def num_samples(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Fairness:
    """One version's fairness figures; the statistics are None when no device reported
    a finite `local_accuracy`."""

    devices: int                     # devices with a finite local_accuracy
    median: float | None
    p10: float | None                # 10th percentile, linear interpolation
    worst_decile: float | None       # mean of the worst ceil(n/10) devices (at least 1)
    under_floor: int                 # devices strictly below the floor
    floor: float
    contributions: dict[str, float] = field(default_factory=dict)  # device -> samples share
    # device -> share of the aggregation weight under [strategy] weighting (samples x
    # factor, aggregator/strategy/contribution.py); the samples share when weighting is
    # "samples". Older versions have none.
    weights: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Fairness:
        return cls(devices=int(row["devices"]), median=row.get("median"), p10=row.get("p10"),
                   worst_decile=row.get("worst_decile"), under_floor=int(row["under_floor"]),
                   floor=float(row["floor"]),
                   contributions={str(k): float(v)
                                  for k, v in dict(row.get("contributions", {})).items()},
                   weights={str(k): float(v)
                            for k, v in dict(row.get("weights", {})).items()})


def fairness_of(updates: Sequence[HasMetrics], floor: float,
                factor: Callable[[Mapping[str, Any]], float] | None = None) -> Fairness:
    """The figures for the updates one version was made from. A device that sent more
    than one update (async) counts once, at the mean of its accuracies. `factor`: the
    contribution weighting's factor on an update's samples, from its metrics."""
    by_device: dict[str, list[float]] = defaultdict(list)
    samples: dict[str, int] = defaultdict(int)
    weight: dict[str, float] = defaultdict(float)
    for update in updates:
        samples[update.device_id] += update.num_samples
        weight[update.device_id] += update.num_samples * (
            factor(update.metrics) if factor is not None else 1.0)
        value = update.metrics.get("local_accuracy")
        if isinstance(value, int | float) and math.isfinite(value):
            by_device[update.device_id].append(float(value))
    total = sum(samples.values())
    shares = {d: samples[d] / total for d in sorted(samples)} if total else {}
    weighed = sum(weight.values())
    weights = {d: weight[d] / weighed for d in sorted(weight)} if weighed > 0 else {}
    values = sorted(sum(v) / len(v) for v in by_device.values())
    if not values:
        return Fairness(0, None, None, None, 0, floor, shares, weights)
    worst = values[:max(1, math.ceil(len(values) / 10))]
    return Fairness(devices=len(values), median=float(np.median(values)),
                    p10=float(np.percentile(values, 10)),
                    worst_decile=sum(worst) / len(worst),
                    under_floor=sum(1 for v in values if v < floor), floor=floor,
                    contributions=shares, weights=weights)
