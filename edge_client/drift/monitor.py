"""What the Predictor saw lately, against the device's reference: input drift (PSI per
feature over a window of recent inputs) and, where the app gives labels, the served
model's accuracy over a window of labelled inputs. Thread-safe: predictions come from
any thread, the status is built on the client's."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from edge_client.drift.reference import InputReference
from edge_client.shared.protocol.drift import DriftReport

DEFAULT_WINDOW = 500  # recent inputs compared with the reference
DEFAULT_MIN_SAMPLES = 200  # fewer: no PSI yet (a small sample shifts by chance)
DEFAULT_LABEL_WINDOW = 200  # recent labelled inputs behind the accuracy


class DriftMonitor:
    """Keeps the bins of the last `window` inputs (one small integer per feature each),
    not the inputs, and whether each of the last `label_window` labelled ones was right."""

    def __init__(self, reference: InputReference, window: int = DEFAULT_WINDOW,
                 min_samples: int = DEFAULT_MIN_SAMPLES,
                 label_window: int = DEFAULT_LABEL_WINDOW) -> None:
        if not 1 <= min_samples <= window:
            raise ValueError(f"drift: need 1 <= min_samples ({min_samples}) <= window "
                             f"({window})")
        if label_window < 1:
            raise ValueError(f"drift: label_window must be >= 1, not {label_window}")
        self.reference = reference
        self.window, self.min_samples = window, min_samples
        self._batches: deque[np.ndarray] = deque()  # bins of recent inputs, oldest first
        self._held = 0  # rows in _batches
        self._outcomes: deque[bool] = deque(maxlen=label_window)
        self._lock = threading.Lock()

    def observe(self, x: Any) -> None:
        """Count inputs the model is asked about; rows with a NaN or an infinity are left
        out. ValueError for inputs of another width than the reference's."""
        bins = self.reference.bins_of(x)[-self.window:]
        if bins.shape[0] == 0:
            return
        with self._lock:
            self._batches.append(bins)
            self._held += bins.shape[0]
            while self._held - self._batches[0].shape[0] >= self.window:
                self._held -= self._batches.popleft().shape[0]

    def observe_outcomes(self, correct: Any) -> None:
        """Whether each labelled input was predicted right (booleans, one per input)."""
        flags = np.asarray(correct, dtype=bool).reshape(-1)
        with self._lock:
            self._outcomes.extend(bool(c) for c in flags)

    def reset(self, reference: InputReference | None = None) -> None:
        """Forget what was seen (and use `reference` from now on, if given)."""
        with self._lock:
            if reference is not None:
                self.reference = reference
            self._batches.clear()
            self._held = 0
            self._outcomes.clear()

    def report(self) -> DriftReport:
        """The scores now: PSI once `min_samples` inputs are in the window."""
        with self._lock:
            batches = list(self._batches)
            outcomes = list(self._outcomes)
        accuracy = sum(outcomes) / len(outcomes) if outcomes else None
        seen = sum(b.shape[0] for b in batches)
        if seen < self.min_samples:
            return DriftReport(seen=seen, accuracy=accuracy, labelled=len(outcomes))
        bins = np.concatenate(batches)[-self.window:]
        scores = self.reference.psi_of_bins(bins)
        worst = int(np.argmax(scores))
        return DriftReport(psi_max=round(float(scores[worst]), 6),
                           psi_mean=round(float(scores.mean()), 6), feature=worst,
                           seen=int(bins.shape[0]), accuracy=accuracy,
                           labelled=len(outcomes))
