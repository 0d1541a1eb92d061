"""The device side of serving: a Predictor that hot-swaps to each global model it is given.

A device app passes `HotSwapLog.on_model` as its EdgeClient's `on_model`. Every time the
device takes a new global model, the Predictor builds it in onnxruntime as int8 and
swaps it in; this log counts the swaps and scores each served version on windows the
device keeps for checking (in a real app: windows a technician labelled on site).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_client.export import ExportError
from edge_client.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class ServedVersion:
    version: int
    load_s: float  # export + onnxruntime session, on the device loop's thread
    local_accuracy: float  # on the device's own check windows


@dataclass
class HotSwapLog:
    """Loads every global model into `predictor`; records what was served and what not."""

    predictor: Predictor
    x_check: np.ndarray
    y_check: np.ndarray
    served: list[ServedVersion] = field(default_factory=list)
    not_served: dict[int, str] = field(default_factory=dict)  # version -> why

    @property
    def swaps(self) -> int:
        return len(self.served)

    def on_model(self, version: int, arch: dict[str, Any], weights: dict[str, np.ndarray]
                 ) -> None:
        """EdgeClient calls this on its loop for each model it takes: keep it short, and
        never let a model that cannot be served stop the device."""
        started = time.perf_counter()
        before = self.predictor.version
        try:
            self.predictor.load(version, arch, weights)
        except ExportError as exc:
            # Version 0 of a QAT model has no activation ranges yet ([0, 0]): it cannot be
            # int8. The device trains on it anyway and serves from the next version.
            self.not_served[version] = str(exc).splitlines()[0]
            return
        if self.predictor.version == before:  # not newer than the one served
            self.not_served[version] = "not newer than the served version"
            return
        accuracy = float((self.predictor.predict(self.x_check) == self.y_check).mean())
        self.served.append(ServedVersion(version, round(time.perf_counter() - started, 4),
                                         round(accuracy, 4)))
        log.info("served version %d (local accuracy %.3f)", version, accuracy)

    def summary(self) -> dict[str, Any]:
        return {"runtime": f"{self.predictor.runtime} {'int8' if self.predictor.int8 else ''}"
                .strip(),
                "swaps": self.swaps,
                "versions_served": [s.version for s in self.served],
                "local_accuracy_per_version": [s.local_accuracy for s in self.served],
                "load_s_median": (round(float(np.median([s.load_s for s in self.served])), 4)
                                  if self.served else None),
                "check_windows": len(self.y_check),
                "not_served": {str(v): why for v, why in self.not_served.items()}}
