"""The device's own models: personal layers or a Ditto model, and the choice of a
cluster's model (docs/heterogeneity.md). DeviceIO runs them; the session only passes
their figures on (update metrics, status)."""

from edge_client.personal.local_models import LocalFit, LocalModels

__all__ = ["LocalFit", "LocalModels"]
