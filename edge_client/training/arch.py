"""Models from their description ("arch"), the JSON-able dict stored with every model.

    {"kind": "mlp", "sizes": [64, 1333, 10], "qat": true}
    {"kind": "sequential", "input_shape": [128, 3], "qat": true, "layers": [
        {"type": "conv1d", "filters": 8, "kernel": 5, "stride": 1}, {"type": "relu"},
        {"type": "maxpool1d", "size": 2}, {"type": "flatten"},
        {"type": "dense", "units": 32}, {"type": "relu"}, {"type": "dense", "units": 4}]}

Layers are named conv0, conv1, ..., dense0, dense1, ..., aq0, aq1, ... in order, and
weights are drawn from one generator in layer order, so (arch, seed) always gives the
same model (drawn when first read: a device's come from the aggregator, and never load
numpy.random). With "qat", ActQuant layers go where the int8 model requantizes: after the
input, and after every Dense/Conv1D (after its ReLU when one follows, so the ReLU is
fused as TFLite does); MaxPool1D and Flatten keep their input's quantization.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_client.training.layers import ActQuant, Conv1D, Dense, Flatten, Layer, MaxPool1D, ReLU
from edge_client.training.model import Sequential

Shape = tuple[int, ...]  # one sample's shape: (features,) or (length, channels)

_LAYER_KEYS = {  # type -> (required keys, optional keys with defaults)
    "dense": (("units",), {}),
    "conv1d": (("filters", "kernel"), {"stride": 1}),
    "relu": ((), {}),
    "maxpool1d": (("size",), {}),
    "flatten": ((), {}),
}
_ARCH_KEYS = {  # kind -> the keys its arch may have
    "mlp": {"kind", "sizes", "qat"},
    "sequential": {"kind", "input_shape", "layers", "qat"},
}


def build_model(arch: dict[str, Any], seed: int = 0) -> Sequential:
    """The model an arch describes; ValueError naming the key for anything wrong in it."""
    if not isinstance(arch, dict):
        raise ValueError(f"arch must be a dict, got {type(arch).__name__}")
    kind = arch.get("kind")
    if kind not in _ARCH_KEYS:
        raise ValueError(f"arch kind {kind!r} is not known; use one of {sorted(_ARCH_KEYS)}")
    unknown = sorted(set(arch) - _ARCH_KEYS[kind])
    if unknown:
        raise ValueError(f"arch: unknown keys {unknown} for kind {kind!r}")
    qat = arch.get("qat", False)
    if not isinstance(qat, bool):
        raise ValueError(f"arch qat must be true or false, got {qat!r}")
    if kind == "mlp":
        if "sizes" not in arch:
            raise ValueError("arch: missing key 'sizes' for kind 'mlp'")
        return mlp(_positive_ints(arch["sizes"], "sizes"), seed, qat)
    for key in ("input_shape", "layers"):
        if key not in arch:
            raise ValueError(f"arch: missing key {key!r} for kind 'sequential'")
    return sequential(arch["input_shape"], arch["layers"], seed, qat)


def mlp(sizes: Sequence[int], seed: int = 0, qat: bool = False) -> Sequential:
    """Dense/ReLU/.../Dense with layers named dense0, dense1, ...; the last layer gives logits."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least input and output sizes, got {list(sizes)}")
    layers: list[dict[str, Any]] = []
    for i, units in enumerate(sizes[1:]):
        if i > 0:
            layers.append({"type": "relu"})
        layers.append({"type": "dense", "units": units})
    return sequential([sizes[0]], layers, seed, qat)


def sequential(input_shape: Sequence[int], layers: Sequence[dict[str, Any]], seed: int = 0,
               qat: bool = False) -> Sequential:
    """Build the layers in order, tracking one sample's shape to size each from the last."""
    shape: Shape = tuple(_positive_ints(input_shape, "input_shape"))
    if len(shape) not in (1, 2):
        raise ValueError(f"arch input_shape must be [features] or [length, channels], got "
                         f"{list(shape)}")
    if not isinstance(layers, list | tuple) or not layers:
        raise ValueError("arch layers must be a non-empty list of tables")
    counts = {"conv": 0, "dense": 0}
    built: list[Layer] = []
    for i, spec in enumerate(layers):
        kind, options = _layer_options(spec, f"arch layers[{i}]")
        where = f"arch layers[{i}] ({kind})"
        layer, shape = _BUILDERS[kind](options, shape, counts, qat, where)
        built.append(layer)
    if len(shape) != 1:
        raise ValueError(f"arch: the last layer must give flat logits (n, classes), but it "
                         f"gives (n, {', '.join(map(str, shape))}); end with flatten and dense")
    return Sequential(_with_act_quant(built) if qat else built, InitialWeights(built, seed))


class InitialWeights:
    """Draws a model's initial weights from one generator of `seed`, layer by layer in
    order: run by the model only if they are read before anything sets them (model.py)."""

    def __init__(self, layers: list[Layer], seed: int) -> None:
        self.layers, self.seed = layers, seed

    def __call__(self) -> None:
        rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            if isinstance(layer, Dense | Conv1D):
                layer.draw_weights(rng)


def _with_act_quant(layers: list[Layer]) -> list[Layer]:
    """Insert aq0 at the input and one after each Dense/Conv1D block (after its ReLU)."""
    out: list[Layer] = [ActQuant("aq0")]
    for i, layer in enumerate(layers):
        out.append(layer)
        follows_block = i > 0 and isinstance(layer, ReLU) and isinstance(layers[i - 1],
                                                                          Dense | Conv1D)
        is_block = isinstance(layer, Dense | Conv1D)
        relu_next = i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
        if follows_block or (is_block and not relu_next):
            out.append(ActQuant(f"aq{sum(isinstance(x, ActQuant) for x in out)}"))
    return out


def _layer_options(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a table with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _LAYER_KEYS:
        raise ValueError(f"{where}: type {kind!r} is not known; use one of "
                         f"{sorted(_LAYER_KEYS)}")
    required, optional = _LAYER_KEYS[kind]
    where = f"{where} ({kind})"
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    unknown = sorted(set(spec) - {"type", *required, *optional})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    options = {**optional, **{k: v for k, v in spec.items() if k != "type"}}
    for key, value in options.items():
        _positive_int(value, f"{where} {key}")
    return kind, options


def _dense(options: dict, shape: Shape, counts: dict, qat: bool,
           where: str) -> tuple[Layer, Shape]:
    if len(shape) != 1:
        raise ValueError(f"{where}: dense needs a flat input, got (n, "
                         f"{', '.join(map(str, shape))}); put a flatten before it")
    name = f"dense{counts['dense']}"
    counts["dense"] += 1
    return Dense(shape[0], options["units"], name, None, qat=qat), (options["units"],)


def _conv1d(options: dict, shape: Shape, counts: dict, qat: bool,
            where: str) -> tuple[Layer, Shape]:
    if len(shape) != 2:
        raise ValueError(f"{where}: conv1d needs (length, channels) input, got {list(shape)}")
    if options["kernel"] > shape[0]:
        raise ValueError(f"{where}: kernel {options['kernel']} is longer than the input "
                         f"length {shape[0]}")
    name = f"conv{counts['conv']}"
    counts["conv"] += 1
    layer = Conv1D(shape[1], options["filters"], options["kernel"], name, None,
                   stride=options["stride"], qat=qat)
    return layer, (layer.output_length(shape[0]), options["filters"])


def _relu(options: dict, shape: Shape, counts: dict, qat: bool,
          where: str) -> tuple[Layer, Shape]:
    return ReLU(), shape


def _maxpool1d(options: dict, shape: Shape, counts: dict, qat: bool,
               where: str) -> tuple[Layer, Shape]:
    if len(shape) != 2:
        raise ValueError(f"{where}: maxpool1d needs (length, channels) input, got {list(shape)}")
    if options["size"] > shape[0]:
        raise ValueError(f"{where}: size {options['size']} is longer than the input length "
                         f"{shape[0]}")
    return MaxPool1D(options["size"]), (shape[0] // options["size"], shape[1])


def _flatten(options: dict, shape: Shape, counts: dict, qat: bool,
             where: str) -> tuple[Layer, Shape]:
    return Flatten(), (math.prod(shape),)


_BUILDERS: dict[str, Callable[..., tuple[Layer, Shape]]] = {
    "dense": _dense,
    "conv1d": _conv1d,
    "relu": _relu,
    "maxpool1d": _maxpool1d,
    "flatten": _flatten,
}


def _positive_ints(values: Any, where: str) -> list[int]:
    if not isinstance(values, list | tuple):
        raise ValueError(f"arch {where} must be a list of positive integers, got {values!r}")
    return [_positive_int(v, f"arch {where}[{i}]") for i, v in enumerate(values)]


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return int(value)
