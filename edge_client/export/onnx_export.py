"""ONNX export: a float32 graph, or an int8 QDQ graph that carries the model's own qparams.

Built with `onnx.helper` (the `onnx` extra), imported inside the functions so the device
SDK imports without it. Layout: the model takes NWC like training; a Transpose turns it
into the NCW that ONNX Conv and MaxPool need, and another turns it back before Flatten,
so the flattened order matches numpy and TFLite.

In the int8 graph, weights are int8 with per-output-channel scales (DequantizeLinear with
axis=0), biases int32 at input_scale * weight_scale, and every activation passes through
QuantizeLinear/DequantizeLinear with the per-tensor qparams QAT or calibration gave it.
onnxruntime fuses those patterns into integer kernels; nothing is re-calibrated here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_client.export.graph import (
    Conv1DOp,
    DenseOp,
    FlattenOp,
    Graph,
    MaxPool1DOp,
    float_graph,
)
from edge_client.export.quantized import QParams, QuantizedGraph, quantized_graph
from edge_client.shared.weights import Weights

OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) arrived in opset 13
IR_VERSION = 7  # the IR that goes with opset 13; older runtimes load it too
INPUT, OUTPUT = "x", "logits"


def to_onnx(arch: dict[str, Any], weights: Weights, int8: bool = False) -> bytes:
    """Serialized ONNX model: input "x" (batch, *input_shape) float32, output "logits".

    int8=True needs activation ranges in the weights (a QAT model, or one from
    `calibrate`); float32 export of a QAT model drops its fake quantization.
    """
    if int8:
        return onnx_from_quantized(quantized_graph(arch, weights))
    return onnx_from_graph(float_graph(arch, weights))


def onnx_from_graph(graph: Graph) -> bytes:
    """The float32 ONNX model of a Graph."""
    return _OnnxBuilder(graph, None).build()


def onnx_from_quantized(qgraph: QuantizedGraph) -> bytes:
    """The int8 QDQ ONNX model of a QuantizedGraph."""
    return _OnnxBuilder(qgraph.graph, qgraph).build()


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'fedge[onnx]'") \
            from exc
    return onnx


class _OnnxBuilder:
    """Collects nodes and initializers while walking the ops once."""

    def __init__(self, graph: Graph, qgraph: QuantizedGraph | None) -> None:
        self.onnx = _onnx()
        self.graph, self.qgraph = graph, qgraph
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def build(self) -> bytes:
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        x = INPUT
        channels_first = len(self.graph.input_shape) == 2  # windows: NWC -> NCW for Conv
        if channels_first:
            x = self._node("Transpose", [x], perm=[0, 2, 1])
        if self.qgraph is not None:
            x = self._qdq(x, self.qgraph.input)
        for index, op in enumerate(self.graph.ops):
            x, channels_first = self._op(index, op, x, channels_first)
        self.nodes.append(helper.make_node("Identity", [x], [OUTPUT]))
        batch = ["n"]
        graph = helper.make_graph(
            self.nodes, "fedge",
            [helper.make_tensor_value_info(INPUT, tp.FLOAT, batch + list(self.graph.input_shape))],
            [helper.make_tensor_value_info(OUTPUT, tp.FLOAT,
                                           batch + list(self.graph.output_shape))],
            initializer=self.initializers)
        model = helper.make_model(graph, producer_name="fedge",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        self.onnx.checker.check_model(model)
        return model.SerializeToString()

    # ------------------------------------------------------------ one op
    def _op(self, index: int, op: Any, x: str, channels_first: bool) -> tuple[str, bool]:
        if isinstance(op, DenseOp):
            return self._dense(index, op, x), channels_first
        if isinstance(op, Conv1DOp):
            return self._conv(index, op, x), channels_first
        if isinstance(op, MaxPool1DOp):
            y = self._node("MaxPool", [x], kernel_shape=[op.size], strides=[op.size])
            return self._same_qparams(index, y), channels_first
        if isinstance(op, FlattenOp):
            if channels_first:  # back to NWC so the order matches numpy's reshape
                x = self._same_qparams(index, self._node("Transpose", [x], perm=[0, 2, 1]))
            y = self._node("Flatten", [x], axis=1)
            return self._same_qparams(index, y), False
        raise TypeError(f"unknown op {op!r}")

    def _dense(self, index: int, op: DenseOp, x: str) -> str:
        # Gemm with transB: weights stored (out, in), so the output channel is axis 0.
        w, b = self._weight_and_bias(index, op.weight.T, op.bias, op.name)
        y = self._node("Gemm", [x, w, b], transB=1)
        return self._activation(index, op.relu, y)

    def _conv(self, index: int, op: Conv1DOp, x: str) -> str:
        # (kernel, in, out) -> (out, in, kernel), the ONNX Conv weight layout.
        w, b = self._weight_and_bias(index, op.weight.transpose(2, 1, 0), op.bias, op.name)
        y = self._node("Conv", [x, w, b], kernel_shape=[op.kernel], strides=[op.stride])
        return self._activation(index, op.relu, y)

    def _activation(self, index: int, relu: bool, y: str) -> str:
        if relu:
            y = self._node("Relu", [y])
        return self._same_qparams(index, y)

    def _same_qparams(self, index: int, y: str) -> str:
        """In the int8 graph, Q/DQ after each op with that op's output qparams."""
        if self.qgraph is None:
            return y
        return self._qdq(y, self.qgraph.outputs[index])

    def _weight_and_bias(self, index: int, weight_oi: np.ndarray, bias: np.ndarray,
                         name: str) -> tuple[str, str]:
        """Float initializers, or int8/int32 ones behind per-channel DequantizeLinear."""
        if self.qgraph is None:
            return (self._const(f"{name}.weight", weight_oi.astype(np.float32)),
                    self._const(f"{name}.bias", bias.astype(np.float32)))
        layer = self.qgraph.layers[index]
        assert layer is not None
        # The same transform as the float weight: output channel first.
        w_q = layer.weight_q.T if isinstance(layer.op, DenseOp) else \
            layer.weight_q.transpose(2, 1, 0)
        out = len(layer.weight_scale)
        w = self._node("DequantizeLinear", [
            self._const(f"{name}.weight_q", np.ascontiguousarray(w_q, dtype=np.int8)),
            self._const(f"{name}.weight_scale", layer.weight_scale.astype(np.float32)),
            self._const(f"{name}.weight_zero", np.zeros(out, np.int8))], axis=0)
        b = self._node("DequantizeLinear", [
            self._const(f"{name}.bias_q", layer.bias_q.astype(np.int32)),
            self._const(f"{name}.bias_scale", layer.bias_scale.astype(np.float32)),
            self._const(f"{name}.bias_zero", np.zeros(out, np.int32))], axis=0)
        return w, b

    # ------------------------------------------------------------ plumbing
    def _qdq(self, x: str, qp: QParams) -> str:
        scale = self._const(self._name("scale"), np.array(qp.scale, np.float32))
        zero = self._const(self._name("zero"), np.array(qp.zero_point, np.int8))
        q = self._node("QuantizeLinear", [x, scale, zero])
        return self._node("DequantizeLinear", [q, scale, zero])

    def _node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def _const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"
