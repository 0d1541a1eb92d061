"""The promotion rule: promote a candidate when enough canary devices reported and it
is not worse than production by more than the margin, overall and on the worst decile
of devices (the fairness view's figure, aggregator/fairness.py); roll it back otherwise,
or when the reports do not come in time. A plain function of the reports, so a restart
reaches the same decision from the same stored reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from aggregator.fairness import fairness_of
from aggregator.lifecycle.config import RolloutConfig


class Verdict(Enum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLL_BACK = "roll back"


@dataclass(frozen=True)
class CanarySummary:
    """What the canary devices' reports add up to (weighted by their held-out samples)."""

    devices: int = 0
    samples: int = 0
    candidate_accuracy: float | None = None
    production_accuracy: float | None = None
    candidate_worst_decile: float | None = None
    production_worst_decile: float | None = None
    candidate_loss: float | None = None
    production_loss: float | None = None
    agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    summary: CanarySummary = field(default_factory=CanarySummary)


@dataclass(frozen=True)
class _Accuracy:
    """A report as the fairness view reads an update: one device, its samples, its
    accuracy."""

    device_id: str
    num_samples: int
    metrics: Mapping[str, Any]


def summarize(reports: Sequence[Mapping[str, Any]]) -> CanarySummary:
    if not reports:
        return CanarySummary()
    samples = sum(int(r["samples"]) for r in reports)

    def mean(key: str) -> float:
        return sum(float(r[key]) * int(r["samples"]) for r in reports) / samples

    def mean_of_known(key: str) -> float | None:  # loss and agreement may be missing
        known = [r for r in reports if r.get(key) is not None]
        weight = sum(int(r["samples"]) for r in known)
        return sum(float(r[key]) * int(r["samples"]) for r in known) / weight if known else None

    def worst(key: str) -> float | None:
        found = fairness_of([_Accuracy(r["device_id"], int(r["samples"]),
                                       {"local_accuracy": r[key]}) for r in reports], 0.0)
        return found.worst_decile

    return CanarySummary(len(reports), samples, mean("candidate_accuracy"),
                         mean("production_accuracy"), worst("candidate_accuracy"),
                         worst("production_accuracy"), mean_of_known("candidate_loss"),
                         mean_of_known("production_loss"), mean_of_known("agreement"))


def decide(reports: Sequence[Mapping[str, Any]], config: RolloutConfig,
           elapsed_s: float) -> Decision:
    """What to do with a candidate now, `elapsed_s` after its canary began."""
    s = summarize(reports)
    need = config.min_canary_reports
    if s.devices < need:
        if elapsed_s >= config.canary_timeout_s:
            return Decision(Verdict.ROLL_BACK, f"only {s.devices} of {need} canary reports "
                            f"after {config.canary_timeout_s:g} s ([rollout] "
                            "canary_timeout_s)", s)
        return Decision(Verdict.WAIT, f"{s.devices} of {need} canary reports so far", s)
    assert s.candidate_accuracy is not None and s.production_accuracy is not None
    assert s.candidate_worst_decile is not None and s.production_worst_decile is not None
    overall = s.candidate_accuracy - s.production_accuracy
    worst = s.candidate_worst_decile - s.production_worst_decile
    figures = (f"accuracy {s.candidate_accuracy:.4f} vs {s.production_accuracy:.4f} "
               f"({overall:+.4f}), worst decile {s.candidate_worst_decile:.4f} vs "
               f"{s.production_worst_decile:.4f} ({worst:+.4f}), agreement "
               f"{_share(s.agreement)}, on {s.devices} devices ({s.samples} samples)")
    if overall < -config.margin:
        return Decision(Verdict.ROLL_BACK, f"worse than production overall by more than "
                        f"the margin {config.margin:g}: {figures}", s)
    if worst < -config.margin:
        return Decision(Verdict.ROLL_BACK, f"worse than production on the worst decile of "
                        f"devices by more than the margin {config.margin:g}: {figures}", s)
    return Decision(Verdict.PROMOTE, f"within the margin {config.margin:g} of production: "
                    f"{figures}", s)


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"
