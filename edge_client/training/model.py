"""Sequential: the one model container the numpy trainer and the exporters walk."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_client.training.layers import Layer


class Sequential:
    """Layers applied in order; backward runs them in reverse.

    `layers` is the ordered list the exporters walk. Layers that behave differently while
    training (ActQuant tracks its range) have a `training` flag, set by `set_training`.
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        names = [name for layer in self.layers for name in layer.params()]
        if len(names) != len(set(names)):
            raise ValueError(f"parameter names must be unique, got {names}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def set_training(self, training: bool) -> None:
        for layer in self.layers:
            if hasattr(layer, "training"):
                layer.training = training

    def params(self) -> dict[str, np.ndarray]:
        """The live arrays (not copies), so an optimizer can update them in place."""
        return {name: p for layer in self.layers for name, p in layer.params().items()}

    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the trained parameters; statistics such as ActQuant ranges have none."""
        return {name: g for layer in self.layers for name, g in layer.grads().items()}
