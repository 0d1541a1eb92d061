"""What is known of one model version: the record the service stores with it.

The service writes it once, when it makes the version (aggregator/service.py); the
store, the dashboard, the status command, the privacy accountant and the demo read it.
Version 0 (the initial model) carries only `round`, `updates` and `model_bytes`; a
field the service did not write is None and is left out of the JSON form, so
`to_json()` gives back exactly the dict that was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The fixed fields, in the order the service writes them; everything else (the
# evaluation's metrics, the devices' own evaluation, the privacy accounting) is in
# `metrics`, in the order stored.
_FIELDS = ("round", "updates", "update_bytes", "model_bytes", "delta_bytes", "round_wall_s",
           "mode", "max_train_s", "devices", "secagg")


@dataclass(frozen=True)
class VersionRecord:
    version: int
    created_at: float
    round: int | None = None
    updates: int | None = None            # updates (or secure contributors) it was made from
    update_bytes: int | None = None       # encoded update messages it was made from
    model_bytes: int | None = None        # the Model message as published
    delta_bytes: int | None = None        # the downlink delta, 0 when none was sent
    round_wall_s: float | None = None     # from opening the task to making the version
    mode: str | None = None               # sync | async
    max_train_s: float | None = None      # the slowest device's training time
    devices: tuple[str, ...] | None = None  # who contributed, sorted
    secagg: Mapping[str, Any] | None = None  # a secure round's facts
    metrics: Mapping[str, Any] = field(default_factory=dict)  # evaluation, DP accounting

    @classmethod
    def from_info(cls, version: int, created_at: float, info: Mapping[str, Any]
                  ) -> VersionRecord:
        """A record from the service's info dict (as stored in the models table)."""
        known = {k: info[k] for k in _FIELDS if k in info}
        if known.get("devices") is not None:
            known["devices"] = tuple(known["devices"])
        rest = {k: v for k, v in info.items() if k not in _FIELDS}
        return cls(version, created_at, **known, metrics=rest)

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> VersionRecord:
        """The inverse of `to_json`."""
        info = {k: v for k, v in row.items() if k not in ("version", "created_at")}
        return cls.from_info(row["version"], row["created_at"], info)

    def info(self) -> dict[str, Any]:
        """The stored info: every field that was written, then the metrics."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name == "devices" else value
        if self.secagg is not None:  # written after the evaluation's metrics
            del out["secagg"]
            return {**out, **self._evaluation(), "secagg": self.secagg, **self._privacy()}
        return {**out, **self.metrics}

    def to_json(self) -> dict[str, Any]:
        """The record as the API, the demo and older callers know it: a flat dict."""
        return {"version": self.version, "created_at": self.created_at, **self.info()}

    @property
    def accuracy(self) -> float | None:
        """The service's evaluation of this version, if it ran one."""
        return self.metrics.get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.metrics.get("loss")

    @property
    def epsilon(self) -> float | None:
        """Differential privacy spent up to and with this version, if it was made with DP."""
        return self.metrics.get("epsilon")

    def metric(self, name: str) -> Any:
        """One metric by name (e.g. `dp_next_clip`), None when not recorded."""
        return self.metrics.get(name)

    def _evaluation(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if not _is_privacy(k)}

    def _privacy(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if _is_privacy(k)}


def _is_privacy(name: str) -> bool:
    """The accounting fields aggregator/privacy/hooks.py adds after everything else."""
    return name == "epsilon" or name.startswith("dp_")
