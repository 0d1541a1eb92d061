"""The int8 form of a Graph: int8 weights, int32 biases and a (scale, zero point) per tensor.

One step shared by the ONNX QDQ export, the TFLite full-integer export and the numpy int8
reference, so the three agree by construction on every number they are given. The math
is the training side's (`edge_client.training.quantize`): the same weight scales and
activation qparams that QAT's fake quantization used, so export reproduces what was
trained and never re-calibrates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_client.export.graph import Conv1DOp, DenseOp, ExportError, Graph, float_graph
from edge_client.shared.weights import Weights
from edge_client.training.quantize import (
    act_qparams,
    dequantize_act,
    quantize_act,
    quantize_bias,
    quantize_weight,
)


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine int8: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float -> int8 as ONNX QuantizeLinear does it, so every runtime sees the same input."""
        return quantize_act(np.asarray(x, np.float32), self.scale, self.zero_point)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize_act(np.asarray(q), self.scale, self.zero_point)


@dataclass(frozen=True)
class QuantizedLayer:
    """A dense or conv1d layer in int8: weights in the training layout, out channel last."""

    op: DenseOp | Conv1DOp
    weight_q: np.ndarray = field(repr=False)  # int8, symmetric, zero point 0
    weight_scale: np.ndarray = field(repr=False)  # float32, one per output channel
    bias_q: np.ndarray = field(repr=False)  # int32 at input.scale * weight_scale
    input: QParams
    output: QParams

    @property
    def bias_scale(self) -> np.ndarray:
        """input_scale * weight_scale in float32, the scale quantize_bias used."""
        return np.float32(self.input.scale) * self.weight_scale.astype(np.float32)


@dataclass(frozen=True)
class QuantizedGraph:
    """A Graph plus qparams for the input and every op's output; layers[i] for weighted ops."""

    graph: Graph
    input: QParams
    outputs: tuple[QParams, ...]
    layers: tuple[QuantizedLayer | None, ...]

    @property
    def output(self) -> QParams:
        return self.outputs[-1]


def quantized_graph(arch: dict[str, Any], weights: Weights) -> QuantizedGraph:
    """Quantize a model whose weights carry activation ranges (QAT, or after `calibrate`).

    A float model without ranges is an ExportError: quantizing it needs a calibration set.
    """
    return quantize_graph(float_graph(arch, weights))


def quantize_graph(graph: Graph) -> QuantizedGraph:
    """Add int8 qparams to a Graph whose ops carry activation ranges."""
    if not graph.has_ranges:
        raise ExportError("int8 needs activation ranges, and this model has none: train it "
                          "with qat, or quantize it after training with a calibration set "
                          "(edge_client.training.quantize.calibrate, or `fedge export "
                          "--calibration data.npz`)")
    assert graph.input_range is not None
    _check_seen(graph)
    current = _qparams(graph.input_range)
    first = current
    outputs: list[QParams] = []
    layers: list[QuantizedLayer | None] = []
    for op in graph.ops:
        if isinstance(op, DenseOp | Conv1DOp):
            assert op.out_range is not None
            out = _qparams(op.out_range)
            layers.append(_quantize_layer(op, current, out))
            current = out
        else:  # max pooling and flattening keep their input's qparams
            layers.append(None)
        outputs.append(current)
    return QuantizedGraph(graph, first, tuple(outputs), tuple(layers))


def _check_seen(graph: Graph) -> None:
    """[0, 0] is a range that has seen no data yet (a fresh QAT model): int8 would be noise."""
    ranges = [("the input", graph.input_range)] + [
        (f"the output of {op.name}", op.out_range)
        for op in graph.ops if isinstance(op, DenseOp | Conv1DOp)]
    unseen = [where for where, r in ranges if r is not None and r[0] == r[1] == 0.0]
    if unseen:
        raise ExportError(f"the activation range of {', '.join(unseen)} is [0, 0]: this QAT "
                          "model has not seen data yet; train it (a round or more) first")


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (C's round(), TFLite's requantization)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _quantize_layer(op: DenseOp | Conv1DOp, inp: QParams, out: QParams) -> QuantizedLayer:
    weight_q, weight_scale = quantize_weight(op.weight)
    weight_scale = weight_scale.astype(np.float32)
    bias_q = quantize_bias(op.bias, inp.scale, weight_scale)
    # The largest accumulator any int8 input can give: |x_q - x_zero| <= 255. Past int32,
    # quantize_bias has clipped the bias or the runtimes' accumulators would wrap.
    worst = (np.abs(bias_q.astype(np.int64))
             + 255 * np.abs(weight_q.astype(np.int64)).reshape(-1, len(bias_q)).sum(axis=0))
    too_big = np.flatnonzero(worst >= np.iinfo(np.int32).max)
    if too_big.size:
        raise ExportError(f"{op.name}: the bias of output channel(s) {too_big.tolist()} "
                          "does not fit the int32 accumulator at input_scale * "
                          "weight_scale: their weights are too close to zero for int8")
    return QuantizedLayer(op, weight_q, weight_scale, bias_q, inp, out)


def _qparams(act_range: tuple[float, float]) -> QParams:
    scale, zero_point = act_qparams(*act_range)
    return QParams(float(scale), int(zero_point))
