"""Serve the federation's latest global model on the device, in the runtime of your choice.

    predictor = Predictor(runtime="onnxruntime", int8=True)
    client = EdgeClient(config, trainer, x, y, on_model=predictor.load)
    ...
    labels = predictor.predict(window)      # from any thread

With staged rollout (docs/lifecycle.md) the client hands `load` only the production
version; a rollback arrives as a newer version (a copy of the older weights), so the
"never older" rule below never keeps a rollback out.

`load` builds the new version completely (export, session, interpreter) before it
swaps it in with one reference assignment; a predict already running keeps the model
it started with and finishes on it, and the next one sees the new version. A failed
load leaves the old model serving.

In a personalised or clustered federation (docs/heterogeneity.md) `on_model` hands it
the device's own variant of the model it serves: its personal layers in the global
model, its Ditto model, or its cluster's model; again after each fit.

With `monitor_drift` (EdgeClient does it when given the predictor) it also watches
its inputs against the device's training inputs, and `observe_label` takes labels the
app learns later; `drift_report()` is what the device's status carries (docs/lifecycle.md,
"Drift").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.drift.monitor import DriftMonitor
from edge_client.drift.reference import InputReference
from edge_client.export.runtimes import RUNTIMES, InferenceModel, RuntimeOptions, load_model
from edge_client.shared.protocol.drift import DriftReport
from edge_client.shared.weights import Weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One model version, ready to serve."""

    version: int
    arch: dict[str, Any]
    model: InferenceModel


class Predictor:
    """Predictions from the latest global model; hot-swaps when a new version is loaded.

    runtime: "numpy" (always there), "onnxruntime" (fedge[onnx]), "litert" (fedge[litert])
    or "tflite-runtime" (numpy < 2 only). int8: serve the int8 model, which needs a QAT
    model or a `calibration` set (an array of inputs) to quantize a float model on the
    device after training. options: threads, and whether onnxruntime fuses int8 kernels
    (by default only where they are exact; see edge_client.export.runtimes).
    """

    def __init__(self, runtime: str = "numpy", int8: bool = False,
                 calibration: np.ndarray | None = None,
                 options: RuntimeOptions | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} is not known; use one of "
                             f"{', '.join(RUNTIMES)}")
        self.runtime, self.int8 = runtime, int8
        self.options = options or RuntimeOptions()
        self.calibration = None if calibration is None else np.asarray(calibration, np.float32)
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self.drift: DriftMonitor | None = None  # set by monitor_drift

    @property
    def version(self) -> int | None:
        current = self._current
        return None if current is None else current.version

    def load(self, version: int, arch: dict[str, Any], weights: Weights) -> LoadedModel:
        """Build this version in the runtime, then swap it in; errors leave the old one."""
        loaded = self.build(version, arch, weights)
        self.swap_in(loaded)
        return loaded

    def build(self, version: int, arch: dict[str, Any], weights: Weights) -> LoadedModel:
        """Export and load without serving it yet (slow: runs outside any lock)."""
        if self.int8 and not arch.get("qat") and self.calibration is not None:
            from edge_client.training.quantize import calibrate

            arch, weights = calibrate(arch, weights, self.calibration)
        model = load_model(self.runtime, arch, weights, self.int8, self.options)
        return LoadedModel(version, dict(arch), model)

    def swap_in(self, loaded: LoadedModel) -> None:
        """Serve `loaded` from the next predict on; a version older than the current is kept
        out, so a late load never rolls the device back."""
        with self._swap_lock:
            current = self._current
            if current is not None and loaded.version < current.version:
                log.warning("predictor: version %d is older than the served %d; not swapped",
                            loaded.version, current.version)
                return
            self._current = loaded  # one reference assignment: atomic for readers

    def logits(self, x: np.ndarray) -> np.ndarray:
        model = self._serving().model
        if self.drift is not None:
            try:
                self.drift.observe(x)
            except ValueError as exc:  # the model says what is wrong with x, if anything
                log.debug("predictor: inputs not counted for drift: %s", exc)
        return model.logits(x)

    # ------------------------------------------------------------ drift
    def monitor_drift(self, reference: InputReference, **settings: int) -> DriftMonitor:
        """Watch inputs against `reference` from now on; `settings`: window, min_samples,
        label_window (edge_client.drift.monitor)."""
        self.drift = DriftMonitor(reference, **settings)
        return self.drift

    def observe_label(self, y: np.ndarray, x: np.ndarray | None = None,
                      predicted: np.ndarray | None = None) -> float:
        """The true labels `y` of inputs learnt after the fact: give the inputs `x` (the
        served model predicts them again, not counted as new inputs) or what was
        `predicted` for them. Returns this batch's accuracy; counted in drift_report."""
        if (x is None) == (predicted is None):
            raise ValueError("observe_label: give either the inputs x or what was predicted")
        guessed = (np.asarray(predicted).reshape(-1) if predicted is not None
                   else self._serving().model.logits(np.asarray(x)).argmax(axis=1))
        truth = np.asarray(y).reshape(-1)
        if truth.shape != guessed.shape or truth.size == 0:
            raise ValueError(f"observe_label: {truth.size} labels for {guessed.size} "
                             f"predictions")
        correct = guessed == truth
        if self.drift is not None:
            self.drift.observe_outcomes(correct)
        return float(correct.mean())

    def drift_report(self) -> DriftReport | None:
        """The drift scores now, or None when drift is not monitored."""
        return None if self.drift is None else self.drift.report()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids (n,) for inputs (n, *input_shape)."""
        return self.logits(x).argmax(axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits, (n, classes), rows summing to 1."""
        logits = self.logits(x).astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)

    def _serving(self) -> LoadedModel:
        current = self._current  # read once: this call finishes on this model
        if current is None:
            raise RuntimeError("no model loaded yet: call load(version, arch, weights) or "
                               "pass predictor.load as the EdgeClient's on_model")
        return current
