"""A model as a short list of inference ops: what every exporter and runtime walks.

The training side builds a `Sequential` of layers that also carry training state. Export
needs less: weights, shapes, which ReLUs fuse into the layer before them, and the
activation ranges that `ActQuant` layers tracked. `float_graph` reads all of that once,
checks it, and the ONNX, TFLite and numpy int8 paths never look at layers again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge_client.shared.weights import Weights
from edge_client.training import (
    ActQuant,
    Conv1D,
    Dense,
    Flatten,
    MaxPool1D,
    NumpyTrainer,
    ReLU,
    Sequential,
    build_model,
)


class ExportError(ValueError):
    """The model cannot be exported as asked: the message names the layer or setting."""


Range = tuple[float, float]


@dataclass(frozen=True)
class DenseOp:
    """y = x @ weight + bias, then ReLU if `relu`; weight is (in, out) as in training."""

    name: str
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    relu: bool = False
    out_range: Range | None = None  # the ActQuant range after this op (and its ReLU)


@dataclass(frozen=True)
class Conv1DOp:
    """Valid 1-D convolution over NWC input; weight is (kernel, in_channels, out_channels)."""

    name: str
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    stride: int = 1
    relu: bool = False
    out_range: Range | None = None

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class MaxPool1DOp:
    """Max over windows of `size` steps, stride `size`, remainder dropped."""

    size: int


@dataclass(frozen=True)
class FlattenOp:
    """(n, L, C) -> (n, L*C) in row-major order, like numpy reshape and TFLite RESHAPE."""


Op = DenseOp | Conv1DOp | MaxPool1DOp | FlattenOp


@dataclass(frozen=True)
class Graph:
    """The ops of one model in order, with each sample's shape before and after each op."""

    input_shape: tuple[int, ...]
    ops: tuple[Op, ...]
    shapes: tuple[tuple[int, ...], ...]  # shapes[i] is op i's output shape (no batch axis)
    input_range: Range | None = None  # the first ActQuant's range, if the model has one

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    def shape_before(self, index: int) -> tuple[int, ...]:
        return self.input_shape if index == 0 else self.shapes[index - 1]

    @property
    def has_ranges(self) -> bool:
        """True when every tensor int8 needs has a range: the input and each layer's output."""
        weighted = [op for op in self.ops if isinstance(op, DenseOp | Conv1DOp)]
        return self.input_range is not None and all(op.out_range for op in weighted)


def build_trained_model(arch: dict[str, Any], weights: Weights, seed: int = 0) -> Sequential:
    """The training side's model for `arch` with `weights` loaded and checked.

    A mismatch between arch and weights (a missing, extra or mis-shaped array) is an
    ExportError naming them, not a broadcast surprise later; so are NaN or infinite
    weights (a diverged model), which no runtime would serve sensibly.
    """
    model = _model_for(arch, seed)
    try:
        NumpyTrainer(model).set_weights(weights)
    except ValueError as exc:
        raise ExportError(f"weights do not match the arch {_short(arch)}: {exc}") from None
    broken = [name for name, p in model.params().items()
              if not name.endswith(".range") and not np.isfinite(p).all()]
    if broken:  # ranges have their own check, with the layer's name, in float_graph
        raise ExportError(f"weights {broken} hold NaN or infinite values (a diverged model)")
    model.set_training(False)  # inference never moves ActQuant ranges
    return model


def float_graph(arch: dict[str, Any], weights: Weights) -> Graph:
    """Read (arch, weights) into a Graph; ExportError for anything export cannot express."""
    model = build_trained_model(arch, weights)
    input_shape = _input_shape(arch)
    ops: list[Op] = []
    input_range: Range | None = None
    for layer in model.layers:
        if isinstance(layer, Dense):
            ops.append(DenseOp(layer.name, _f32(layer.weight), _f32(layer.bias)))
        elif isinstance(layer, Conv1D):
            ops.append(Conv1DOp(layer.name, _f32(layer.weight), _f32(layer.bias),
                                int(layer.stride)))
        elif isinstance(layer, MaxPool1D):
            ops.append(MaxPool1DOp(int(layer.size)))
        elif isinstance(layer, Flatten):
            ops.append(FlattenOp())
        elif isinstance(layer, ReLU):
            _fuse_relu(ops)
        elif isinstance(layer, ActQuant):
            act_range = _range_of(layer)
            if not ops:
                input_range = act_range
            else:
                _attach_range(ops, layer.name, act_range)
        else:
            raise ExportError(f"layer type {type(layer).__name__} cannot be exported; known: "
                              "Dense, Conv1D, ReLU, MaxPool1D, Flatten, ActQuant")
    if not ops:
        raise ExportError("the model has no layers to export")
    return Graph(input_shape, tuple(ops), _shapes(input_shape, ops), input_range)


def _model_for(arch: dict[str, Any], seed: int) -> Sequential:
    try:
        return build_model(arch, seed=seed)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"arch {_short(arch)} is not a model: {exc}") from None


def _input_shape(arch: dict[str, Any]) -> tuple[int, ...]:
    """One sample's shape; build_model has checked the keys by now."""
    if arch["kind"] == "mlp":
        return (int(arch["sizes"][0]),)
    return tuple(int(d) for d in arch["input_shape"])


def _fuse_relu(ops: list[Op]) -> None:
    last = ops[-1] if ops else None
    if not isinstance(last, DenseOp | Conv1DOp) or last.relu or last.out_range is not None:
        raise ExportError("a ReLU must directly follow a dense or conv1d layer (export fuses "
                          "it into that layer, as TFLite does)")
    ops[-1] = replace(last, relu=True)


def _attach_range(ops: list[Op], name: str, act_range: Range) -> None:
    last = ops[-1]
    if not isinstance(last, DenseOp | Conv1DOp) or last.out_range is not None:
        raise ExportError(f"{name}: an activation range must follow the input or a dense/"
                          f"conv1d layer (and its ReLU), not {type(last).__name__}")
    ops[-1] = replace(last, out_range=act_range)


def _range_of(layer: ActQuant) -> Range:
    lo, hi = float(layer.range[0]), float(layer.range[1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ExportError(f"{layer.name}.range must be finite with min <= max, got {lo}, {hi}")
    return lo, hi


def _shapes(input_shape: tuple[int, ...], ops: list[Op]) -> tuple[tuple[int, ...], ...]:
    shapes = []
    shape = input_shape
    for op in ops:
        shape = _shape_after(op, shape)
        shapes.append(shape)
    return tuple(shapes)


def _shape_after(op: Op, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(op, DenseOp):
        if shape != (op.weight.shape[0],):
            raise ExportError(f"{op.name} expects ({op.weight.shape[0]},) per sample, gets "
                              f"{shape}; flatten first")
        return (int(op.weight.shape[1]),)
    if isinstance(op, Conv1DOp):
        if len(shape) != 2 or shape[1] != op.weight.shape[1]:
            raise ExportError(f"{op.name} expects (length, {op.weight.shape[1]}) per sample, "
                              f"gets {shape}")
        length = (shape[0] - op.kernel) // op.stride + 1
        if length < 1 or op.stride < 1:
            raise ExportError(f"{op.name}: kernel {op.kernel}, stride {op.stride} do not fit "
                              f"length {shape[0]}")
        return (length, int(op.weight.shape[2]))
    if isinstance(op, MaxPool1DOp):
        if len(shape) != 2 or op.size < 1 or shape[0] // op.size < 1:
            raise ExportError(f"maxpool1d size {op.size} does not fit {shape} per sample")
        return (shape[0] // op.size, shape[1])
    if len(shape) != 2:
        raise ExportError(f"flatten expects (length, channels) per sample, gets {shape}")
    return (shape[0] * shape[1],)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.array(array, dtype=np.float32, copy=True)


def _short(arch: Any) -> str:
    text = repr(arch)
    return text if len(text) <= 120 else text[:117] + "..."
