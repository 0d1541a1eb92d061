"""What threads other than the service loop may read: a frozen copy, replaced whole.

The loop publishes a new `ServiceSnapshot` after every change (a version, a task opened
or closed, an update stored, a pause); readers (the demo, `fedge status`, tests, the
dashboard's admin actions) take the current one and never see a half-made version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Task


@dataclass(frozen=True)
class ServiceSnapshot:
    version: int
    global_weights: Mapping[str, np.ndarray]  # read-only view; the arrays are never changed
    arch: Mapping[str, Any]
    history: tuple[VersionRecord, ...]  # one record per version, as stored
    task: Task | None  # the open task, if any
    pending: int  # stored updates waiting for the next version
    paused: bool
    finished: bool
    stopped: str | None  # why training ended before `rounds`, if it did


def frozen_weights(weights: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A read-only view of a weights dict the core replaces (never mutates) per version."""
    return MappingProxyType(dict(weights))
