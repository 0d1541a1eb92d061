"""The global model a device holds: the base of its training and of the next delta."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_client.model_fetch import Held
from edge_client.shared.protocol.tensors import Weights


@dataclass(frozen=True)
class HeldModel:
    version: int
    tensors: Weights = field(repr=False)
    arch: dict
    sha256: str | None = None  # of the model's encoding, as its manifest named it

    def held(self) -> Held:
        return Held(self.version, self.tensors, self.arch)


def copy_weights(weights: Weights) -> Weights:
    """Trainers may update arrays in place; never hand them our reference copy."""
    return {name: array.copy() for name, array in weights.items()}
