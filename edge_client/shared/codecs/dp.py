"""Distributed differential privacy, the device's part: clip the update, add its noise share.

Under distributed DP (docs/privacy.md) the aggregator only ever learns the sum of m
updates (secure aggregation). Each device clips its whole update to L2 norm C and adds
N(0, noise_std^2) per coordinate with noise_std = z C / sqrt(m), so the sum of m updates
carries N(0, (z C)^2): the noise central DP would add, split across the cohort.

The aggregator asks for it in `Task.dp` (`DeviceDp.to_wire`); a device that cannot read
the settings refuses the task rather than send an update without its noise. Imported by
devices and the aggregator: numpy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_client.shared.protocol.errors import RemoteProtocolError, check_settings_map

DP_WIRE_VERSION = 1
_WIRE_KEYS = ("v", "clip", "noise_std")
# Metrics a device adds to its update, so the aggregator can refuse one sent without DP
# (an older device that ignored Task.dp).
CLIP_METRIC = "dp_clip"
NOISE_METRIC = "dp_noise_std"


@dataclass(frozen=True)
class DeviceDp:
    clip: float  # C: L2 bound on the whole flattened update
    noise_std: float  # this device's share of the noise, per coordinate

    def __post_init__(self) -> None:
        for name in ("clip", "noise_std"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"dp {name} must be a finite number > 0, not {value!r}")

    @classmethod
    def share(cls, clip: float, noise_multiplier: float, cohort: int) -> DeviceDp:
        """One device's settings when `cohort` devices together carry noise z * C."""
        if cohort < 1:
            raise ValueError(f"the cohort must be >= 1, not {cohort}")
        return cls(clip, noise_multiplier * clip / math.sqrt(cohort))

    def to_wire(self) -> dict[str, object]:
        return {"v": DP_WIRE_VERSION, "clip": float(self.clip),
                "noise_std": float(self.noise_std)}

    @classmethod
    def from_wire(cls, raw: object) -> DeviceDp:
        """Settings sent by the aggregator; anything unexpected is a RemoteProtocolError."""
        raw = check_settings_map(raw, "dp", DP_WIRE_VERSION, _WIRE_KEYS)
        try:
            return cls(raw["clip"], raw["noise_std"])
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None

    def metrics(self) -> dict[str, float]:
        """What the device reports with its update: the settings it applied."""
        return {CLIP_METRIC: float(self.clip), NOISE_METRIC: float(self.noise_std)}


def clip_and_noise(vector: np.ndarray, dp: DeviceDp,
                   rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """The update clipped to `dp.clip` plus this device's Gaussian noise, as float32, and
    whether it was clipped.

    `rng` must be secret to the device (fresh OS entropy, never a seed others can derive):
    whoever can redraw the noise can subtract it.
    """
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError("need a flat update vector")
    if not np.all(np.isfinite(v)):
        raise ValueError("the update has NaN or inf values")
    norm = float(np.linalg.norm(v))
    clipped = norm > dp.clip
    if clipped:
        v = v * (dp.clip / norm)
    noisy = v + rng.normal(0.0, dp.noise_std, size=v.shape)
    return noisy.astype(np.float32), clipped


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
