"""The int8 model computed in numpy with integer arithmetic, as TFLite's kernels do.

An oracle for the ONNX and TFLite int8 exports, and a runtime for devices with numpy
only. Per layer: int32 accumulate of (x_q - x_zero) * w_q plus the int32 bias, then
requantize with the combined scale input_scale * weight_scale[c] / output_scale,
round half away from zero, add the output zero point and clamp to int8 (to
[output_zero, 127] when a ReLU is fused). Max pooling and flattening work on the int8
codes directly.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_client.export.graph import Conv1DOp, DenseOp, FlattenOp, MaxPool1DOp
from edge_client.export.quantized import QuantizedGraph, QuantizedLayer, round_half_away

INT8_MIN, INT8_MAX = -128, 127


def int8_logits(qgraph: QuantizedGraph, x: np.ndarray) -> np.ndarray:
    """Float input -> dequantized logits, through the integer model."""
    x = np.asarray(x, np.float32)
    expected = qgraph.graph.input_shape
    if x.ndim != len(expected) + 1 or x.shape[1:] != expected:
        raise ValueError(f"expected input (n, {', '.join(map(str, expected))}), got {x.shape}")
    return qgraph.output.dequantize(run_int8(qgraph, qgraph.input.quantize(x)))


def run_int8(qgraph: QuantizedGraph, x_q: np.ndarray) -> np.ndarray:
    """int8 input codes -> int8 output codes."""
    x = np.asarray(x_q, np.int8)
    for op, layer in zip(qgraph.graph.ops, qgraph.layers, strict=True):
        if isinstance(op, MaxPool1DOp):
            n, length, channels = x.shape
            out_length = length // op.size
            x = x[:, : out_length * op.size].reshape(n, out_length, op.size, channels).max(2)
        elif isinstance(op, FlattenOp):
            x = x.reshape(len(x), -1)
        else:
            assert layer is not None
            x = _requantize(layer, _accumulate(layer, x))
    return x


def _accumulate(layer: QuantizedLayer, x_q: np.ndarray) -> np.ndarray:
    """The int32 accumulator: sum of (x_q - x_zero) * w_q, plus the int32 bias.

    The products are summed in float64, which holds every integer below 2**53 exactly:
    the same integers as an int32 accumulator, at BLAS speed.
    """
    x = x_q.astype(np.float64) - layer.input.zero_point
    w = layer.weight_q.astype(np.float64)
    op = layer.op
    if isinstance(op, Conv1DOp):
        # (n, L, C) -> windows (n, L', C, k) at the stride -> (n, L', k * C) rows.
        windows = sliding_window_view(x, op.kernel, axis=1)[:, :: op.stride]
        rows = windows.transpose(0, 1, 3, 2).reshape(*windows.shape[:2], -1)
        acc = rows @ w.reshape(-1, w.shape[-1])
    else:
        assert isinstance(op, DenseOp)
        acc = x @ w
    acc = acc + layer.bias_q.astype(np.float64)
    if np.abs(acc).max(initial=0) > 2**31 - 1:
        raise OverflowError(f"{op.name}: the int32 accumulator overflows")
    return acc


def _requantize(layer: QuantizedLayer, acc: np.ndarray) -> np.ndarray:
    scale = (np.float64(layer.input.scale) * layer.weight_scale.astype(np.float64)
             / np.float64(layer.output.scale))
    y = round_half_away(acc * scale) + layer.output.zero_point
    low = max(INT8_MIN, layer.output.zero_point) if layer.op.relu else INT8_MIN
    return np.clip(y, low, INT8_MAX).astype(np.int8)
