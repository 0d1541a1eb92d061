"""Sequential: the one model container the numpy trainer and the exporters walk."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edge_client.training.layers import Layer
from edge_client.training.weights import check_weights_match


class Sequential:
    """Layers applied in order; backward runs them in reverse.

    `layers` is the ordered list the exporters walk. Layers that behave differently while
    training (ActQuant tracks its range) have a `training` flag, set by `set_training`.

    `draw_weights`, if given, draws the initial weights into the layers; it runs the first
    time the model is used, unless `load` has set every parameter first. A device's
    weights always come from the aggregator before it trains, and drawing them would load
    numpy.random (6.7 MB of RSS) for numbers that are overwritten at once; whoever reads
    the weights of a fresh model still gets exactly the drawn ones.
    """

    def __init__(self, layers: Sequence[Layer],
                 draw_weights: Callable[[], None] | None = None) -> None:
        self._layers = list(layers)
        self._draw_weights = draw_weights
        names = [name for layer in self._layers for name in layer.params()]
        if len(names) != len(set(names)):
            raise ValueError(f"parameter names must be unique, got {names}")

    @property
    def layers(self) -> list[Layer]:
        """The layers, their initial weights drawn if nothing has set them yet."""
        if self._draw_weights is not None:
            draw, self._draw_weights = self._draw_weights, None
            draw()
        return self._layers

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy `weights` into the live parameters: every one, by name, of the same shape
        (else ValueError naming what differs). The initial weights are never drawn."""
        params = {name: p for layer in self._layers for name, p in layer.params().items()}
        check_weights_match(params, dict(weights))
        for name, param in params.items():
            param[...] = weights[name]
        self._draw_weights = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """The shape `forward(x)` gives (ValueError: x does not fit), found without
        drawing the initial weights: shapes do not depend on their values."""
        for layer in self._layers:
            x = layer.forward(x)
        return x.shape

    def backward(self, grad: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def set_training(self, training: bool) -> None:
        for layer in self._layers:
            if hasattr(layer, "training"):
                layer.training = training

    def params(self) -> dict[str, np.ndarray]:
        """The live arrays (not copies), so an optimizer can update them in place."""
        return {name: p for layer in self.layers for name, p in layer.params().items()}

    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the trained parameters; statistics such as ActQuant ranges have none."""
        return {name: g for layer in self.layers for name, g in layer.grads().items()}
