"""Drift on the device (issue 18): a compact reference of the training inputs, and a
monitor of what the Predictor sees at inference (PSI per feature, accuracy on labels the
app gives later). numpy only. See docs/lifecycle.md, "Drift"."""

from edge_client.drift.monitor import DriftMonitor
from edge_client.drift.reference import InputReference, psi
from edge_client.drift.saved import reference_for

__all__ = ["DriftMonitor", "InputReference", "psi", "reference_for"]
