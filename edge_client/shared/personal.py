"""Personalisation as a task carries it: which layers stay on the device (FedPer/FedRep),
or a personal copy pulled toward the global model (Ditto).

Both sides use it: the aggregator writes it into every task from `[personalize]`, a
device reads it before it trains (edge_client/personal/). Off (None on the task) by
default. See docs/heterogeneity.md#personalisation.

- FedPer: Arivazhagan et al. 2019, https://arxiv.org/abs/1912.00818
- FedRep: Collins et al. 2021, https://arxiv.org/abs/2102.07078
- Ditto: Li et al. 2021, https://arxiv.org/abs/2012.04221
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge_client.shared.protocol.errors import RemoteProtocolError

MAX_PERSONAL_LAYERS = 64


class PersonalMode(str, Enum):
    LAYERS = "layers"  # the head (named layers) stays on the device; the body is shared
    DITTO = "ditto"  # a whole personal model, trained beside the global one


@dataclass(frozen=True)
class PersonalSpec:
    """What a device keeps for itself.

    layers: tensor-name prefixes of the personal layers ("dense1." is the demo MLP's
    output layer); a tensor whose name starts with one of them is personal.
    lam: Ditto's pull toward the global model; after each personal fit the personal
    model v becomes (v + lam * w) / (1 + lam), the closed-form minimiser of
    |v' - v|^2 / 2 + lam / 2 |v' - w|^2 (0: purely local, large: the global model).
    """

    mode: PersonalMode
    layers: tuple[str, ...] = ()
    lam: float = 0.1

    def __post_init__(self) -> None:
        if self.mode is PersonalMode.LAYERS and not self.layers:
            raise ValueError("personalize: mode \"layers\" needs personal_layers, e.g. "
                             "[\"dense1.\"]")
        if any("," in n for n in self.layers):
            raise ValueError("personalize: a personal layer name cannot hold a comma")
        if len(self.layers) > MAX_PERSONAL_LAYERS:
            raise ValueError(f"personalize: at most {MAX_PERSONAL_LAYERS} personal_layers")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"personalize.lam must be a finite number >= 0, not {self.lam}")

    def is_personal(self, name: str) -> bool:
        """Whether tensor `name` stays on the device (layers mode)."""
        return self.mode is PersonalMode.LAYERS and name.startswith(self.layers)

    def to_wire(self) -> dict[str, Any]:
        # a flat map (task settings are flat, bounds.py): the prefixes joined by commas
        return {"mode": self.mode.value, "layers": ",".join(self.layers), "lam": self.lam}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> PersonalSpec:
        """RemoteProtocolError: a spec this device cannot follow."""
        try:
            joined = wire.get("layers", "")
            if not isinstance(joined, str):
                raise ValueError("personalize.layers must be names joined by commas")
            layers = [n for n in joined.split(",") if n]
            lam = wire.get("lam", 0.1)
            if not isinstance(lam, int | float) or isinstance(lam, bool):
                raise ValueError("personalize.lam must be a number")
            return cls(PersonalMode(wire.get("mode")), tuple(layers), float(lam))
        except ValueError as exc:
            raise RemoteProtocolError(f"task: personal: {exc}") from None
