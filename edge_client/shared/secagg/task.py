"""What a task carries when its round runs under secure aggregation (`Task.secagg`).

The aggregator puts the round's public parameters in the task; the task's id is the
round id and its `invited` list the participants, so the task is the round setup (the
`RoundSetup` message of phase 0 is rebuilt from it on each device, and, with signing on,
it arrives signed by the aggregator). Everything here is public: the round seed fixes
the neighbour graph and the shared random-k coordinates, and the fixed-point settings
tell every device how to turn its float delta into the integers it masks.

A device that cannot read the field refuses the task (and sends nothing), as it does
for `Task.dp`: guessing at a setting would make its input garbage in everyone's sum.
Imported by devices and the aggregator: numpy and the standard library, plus the
secagg package's own modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.shared.codecs.sparsify import k_for
from edge_client.shared.protocol.errors import check_settings_map
from edge_client.shared.secagg.coordinates import shared_coordinates
from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.fixed_point import FixedPoint
from edge_client.shared.secagg.graph import GraphParams
from edge_client.shared.secagg.messages import (
    MAX_DIM,
    MAX_PARTICIPANTS,
    ROUND_SEED_SIZE,
    RoundSetup,
)
from edge_client.shared.secagg.prg import MAX_BITS, MIN_BITS

SECAGG_TASK_VERSION = 1
SPARSIFY_MODES = ("none", "randk")
_WIRE_KEYS = ("v", "round_seed", "size", "dim", "bits", "degree", "threshold", "clip",
              "scale", "sparsify", "fraction")


@dataclass(frozen=True)
class SecAggTask:
    """The public parameters of one secure round, as the task carries them."""

    round_seed: bytes  # 32 public random bytes: the graph and the random-k coordinates
    size: int  # parameters of the model (the dense delta's length)
    dim: int  # integers each device masks: `size`, or k under random-k
    bits: int  # sums are mod 2**bits
    degree: int  # neighbours per device
    threshold: int  # shares needed to rebuild a secret
    clip: float  # each coordinate of the delta is clipped to [-clip, clip] ...
    scale: float  # ... then multiplied by this and rounded stochastically
    sparsify: str = "none"  # "none" | "randk" (coordinates shared by the whole round)
    fraction: float = 1.0  # randk: share of the coordinates kept

    def __post_init__(self) -> None:
        if not isinstance(self.round_seed, bytes) or len(self.round_seed) != ROUND_SEED_SIZE:
            raise ValueError(f"secagg round_seed must be {ROUND_SEED_SIZE} bytes")
        if not 1 <= self.size <= MAX_DIM:
            raise ValueError(f"secagg size must be in [1, {MAX_DIM}], not {self.size}")
        if self.sparsify not in SPARSIFY_MODES:
            raise ValueError(f"secagg sparsify must be one of {SPARSIFY_MODES}, "
                             f"not {self.sparsify!r}")
        if not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise ValueError(f"secagg fraction must be in (0, 1], not {self.fraction}")
        if self.dim != self.expected_dim():
            raise ValueError(f"secagg dim {self.dim} does not match size {self.size} with "
                             f"sparsify {self.sparsify!r} (expected {self.expected_dim()})")
        if not 2 <= self.threshold <= self.degree:
            raise ValueError(f"secagg threshold must be in [2, degree={self.degree}], "
                             f"not {self.threshold}")
        self.fixed_point(1)  # clip, scale and bits must make sense on their own

    def expected_dim(self) -> int:
        return self.size if self.sparsify == "none" else k_for(self.size, self.fraction)

    @property
    def graph(self) -> GraphParams:
        return GraphParams(self.degree, self.threshold)

    def fixed_point(self, devices: int) -> FixedPoint:
        """The round's encoding when `devices` inputs may add up (ValueError if it wraps)."""
        return FixedPoint(clip=self.clip, scale=self.scale, bits=self.bits,
                          max_devices=devices)

    def coordinates(self) -> np.ndarray | None:
        """The shared random-k coordinates, or None when every coordinate is masked."""
        if self.sparsify == "none":
            return None
        return shared_coordinates(self.round_seed, self.size, self.fraction)

    def setup(self, round_id: str, participants: tuple[str, ...]) -> RoundSetup:
        """Phase 0's message, the same on the aggregator and on every device."""
        return RoundSetup(round_id=round_id, participants=tuple(sorted(participants)),
                          dim=self.dim, bits=self.bits, degree=self.degree,
                          threshold=self.threshold, round_seed=self.round_seed)

    def to_wire(self) -> dict[str, Any]:
        return {"v": SECAGG_TASK_VERSION, "round_seed": self.round_seed, "size": self.size,
                "dim": self.dim, "bits": self.bits, "degree": self.degree,
                "threshold": self.threshold, "clip": float(self.clip),
                "scale": float(self.scale), "sparsify": self.sparsify,
                "fraction": float(self.fraction)}

    @classmethod
    def from_wire(cls, raw: object) -> SecAggTask:
        """Settings sent by the aggregator; anything unexpected is a BadSecAggMessage."""
        raw = check_settings_map(raw, "secagg", SECAGG_TASK_VERSION, _WIRE_KEYS,
                                 BadSecAggMessage)
        ints = {k: raw[k] for k in ("size", "dim", "bits", "degree", "threshold")}
        floats = {k: raw[k] for k in ("clip", "scale", "fraction")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints.values()):
            raise BadSecAggMessage("secagg settings: size, dim, bits, degree and threshold "
                                   "must be integers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool)
                   for v in floats.values()):
            raise BadSecAggMessage("secagg settings: clip, scale and fraction must be numbers")
        if not all(0 <= ints[k] <= MAX_PARTICIPANTS for k in ("degree", "threshold")):
            raise BadSecAggMessage(f"secagg settings: degree and threshold must be in "
                                   f"[0, {MAX_PARTICIPANTS}]")
        if not MIN_BITS <= ints["bits"] <= MAX_BITS:
            raise BadSecAggMessage(f"secagg settings: bits must be in [{MIN_BITS}, "
                                   f"{MAX_BITS}], not {ints['bits']}")
        if not isinstance(raw["sparsify"], str) or not isinstance(raw["round_seed"], bytes):
            raise BadSecAggMessage("secagg settings: sparsify must be text and round_seed "
                                   "bytes")
        try:
            return cls(round_seed=raw["round_seed"], sparsify=raw["sparsify"], **ints,
                       clip=float(floats["clip"]), scale=float(floats["scale"]),
                       fraction=float(floats["fraction"]))
        except ValueError as exc:
            raise BadSecAggMessage(str(exc)) from None
