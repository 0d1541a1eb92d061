"""[personalize]: whether devices keep personal layers or a personal model, and what they
reported about it (docs/heterogeneity.md#personalisation).

The aggregator does not see personal models: in "layers" mode devices send a delta that
is zero on their personal layers, so the shared model's head never moves and only the
body is aggregated; in "ditto" mode the global model is trained as usual and each device
keeps its own beside it. What the aggregator keeps is each device's report: the global
and its personal model's accuracy on its own held-out data, and its cluster in a
clustered federation (`device_figures`, stored in the version's info under "personal").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.fairness import HasMetrics
from edge_client.shared.clusters import cluster_count, unstack
from edge_client.shared.personal import PersonalMode, PersonalSpec
from edge_client.shared.weights import Weights

MODES = ("off", *(m.value for m in PersonalMode))
FIGURES = ("global_accuracy", "personal_accuracy", "cluster")


@dataclass
class PersonalizeConfig:
    """[personalize]: off by default."""

    mode: str = "off"  # "off", "layers" (FedPer/FedRep) or "ditto"
    personal_layers: list[str] = field(default_factory=list)  # layers: name prefixes
    lam: float = 0.1  # ditto: the pull toward the global model (PersonalSpec)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"personalize.mode must be one of {', '.join(MODES)}, "
                             f"not {self.mode!r}")
        if not isinstance(self.personal_layers, list) or not all(
                isinstance(n, str) and n for n in self.personal_layers):
            raise ValueError("personalize.personal_layers must be a list of tensor-name "
                             "prefixes, e.g. [\"dense1.\"]")
        self.spec()  # checks the rest, with the key named

    def spec(self) -> PersonalSpec | None:
        if self.mode == "off":
            return None
        return PersonalSpec(PersonalMode(self.mode), tuple(self.personal_layers), self.lam)

    def wire(self) -> dict[str, Any] | None:
        """The task's `personal` field."""
        spec = self.spec()
        return None if spec is None else spec.to_wire()


def check_layers(config: PersonalizeConfig, weights: Weights) -> None:
    """ValueError naming the key when a personal layer matches no tensor of the model (a
    typo would leave every device training the plain global model)."""
    if config.mode != "layers":
        return
    names = sorted(unstack(weights)[0] if cluster_count(weights) else weights)
    for prefix in config.personal_layers:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"personalize.personal_layers: {prefix!r} names no tensor of "
                             f"the model (its tensors: {', '.join(names)})")
    if all(any(name.startswith(p) for p in config.personal_layers) for name in names):
        raise ValueError("personalize.personal_layers covers every tensor of the model: "
                         "nothing would be shared")


def device_figures(updates: Sequence[HasMetrics]) -> dict[str, dict[str, float]]:
    """Per device, the latest figures its updates carried (global_accuracy,
    personal_accuracy, cluster); devices that sent none are left out."""
    out: dict[str, dict[str, float]] = {}
    for update in updates:
        row = {k: float(update.metrics[k]) for k in FIGURES
               if isinstance(update.metrics.get(k), int | float)
               and math.isfinite(update.metrics[k])}
        if row:
            out[update.device_id] = row
    return dict(sorted(out.items()))


def personal_info(updates: Sequence[HasMetrics]) -> dict[str, Any]:
    """{"personal": summary} for a version's info when its devices reported figures;
    nothing otherwise, so a plain federation's versions stay as they were."""
    figures = device_figures(updates)
    return {"personal": summary(figures)} if figures else {}


def merged(infos: Iterable[Any]) -> dict[str, Any] | None:
    """The versions' "personal" infos, oldest first, as one summary: each device's latest
    row (an async version, or a sync round a device sat out, holds only some devices).
    None when no version has figures."""
    rows: dict[str, dict[str, float]] = {}
    seen = False
    for info in infos:
        if isinstance(info, dict):
            seen = True
            rows.update({str(d): dict(r) for d, r in dict(info.get("devices", {})).items()})
    return summary(dict(sorted(rows.items()))) if seen else None


def summary(figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The version's "personal" info: per-device rows, their means and cluster sizes."""
    def mean(key: str) -> float | None:
        values = [row[key] for row in figures.values() if key in row]
        return sum(values) / len(values) if values else None
    sizes: dict[str, int] = {}
    for row in figures.values():
        if "cluster" in row:
            sizes[str(int(row["cluster"]))] = sizes.get(str(int(row["cluster"])), 0) + 1
    return {"devices": figures, "global_accuracy": mean("global_accuracy"),
            "personal_accuracy": mean("personal_accuracy"),
            "cluster_sizes": dict(sorted(sizes.items()))}
