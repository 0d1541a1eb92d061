"""A device's drift scores as its status carries them (issue 18, "Drift").

Figures, not data: how far the inputs its Predictor saw lately are from its training
inputs (PSI per feature, edge_client/drift/), and, where the app gave labels, the served
model's accuracy on them. The field is optional: older devices leave it out, older
aggregators ignore it (docs/protocol.md, "Statuses").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_client.shared.protocol.bounds import MAX_INT
from edge_client.shared.protocol.errors import RemoteProtocolError
from edge_client.shared.protocol.fields import Fields

MAX_PSI = 1e6  # far above any real shift (PSI grows with log(1/epsilon) per bin)
MAX_FEATURES = 1 << 20


@dataclass(frozen=True)
class DriftReport:
    """What a device says about its inputs and, if labelled, its accuracy.

    psi_max/psi_mean: over the features, of the inputs in its window against its
    reference; None until the window holds enough inputs. feature: where psi_max is.
    seen: inputs in the window. accuracy: of the served model on the last `labelled`
    labelled inputs; None without labels."""

    psi_max: float | None = None
    psi_mean: float | None = None
    feature: int | None = None
    seen: int = 0
    accuracy: float | None = None
    labelled: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"psi_max": self.psi_max, "psi_mean": self.psi_mean, "feature": self.feature,
                "seen": self.seen, "accuracy": self.accuracy, "labelled": self.labelled}

    def to_json(self) -> dict[str, Any]:
        return self.to_wire()


def drift_from(f: Fields) -> DriftReport | None:
    """The status's optional `drift` map, every field checked; None when absent."""
    if f.raw_map("drift", optional=True) is None:
        return None
    d = f.sub("drift")
    psi_max = d.float("psi_max", optional=True, minimum=0.0, maximum=MAX_PSI)
    psi_mean = d.float("psi_mean", optional=True, minimum=0.0, maximum=MAX_PSI)
    if (psi_max is None) != (psi_mean is None):
        raise RemoteProtocolError("status.drift: psi_max and psi_mean come together")
    if psi_max is not None and psi_mean > psi_max * (1 + 1e-9) + 1e-12:
        raise RemoteProtocolError("status.drift: psi_mean is above psi_max")
    accuracy = d.float("accuracy", optional=True, minimum=0.0, maximum=1.0)
    labelled = d.int("labelled", maximum=MAX_INT)
    if accuracy is not None and labelled < 1:
        raise RemoteProtocolError("status.drift: an accuracy needs labelled >= 1")
    return DriftReport(psi_max=psi_max, psi_mean=psi_mean,
                       feature=d.int("feature", optional=True, maximum=MAX_FEATURES),
                       seen=d.int("seen", maximum=MAX_INT), accuracy=accuracy,
                       labelled=labelled)
