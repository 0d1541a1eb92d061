"""TFLite export without TensorFlow: the flatbuffer written with LiteRT's schema object API.

`ai_edge_litert.schema_py_generated` (the `litert` extra) holds the TFLite schema's
Python classes (ModelT, SubGraphT, TensorT, OperatorT, ...); packing a ModelT gives the
same bytes the TensorFlow converter would write for these few ops:

- dense: FULLY_CONNECTED, weights (out, in), ReLU fused;
- conv1d: RESHAPE (n, L, C) -> (n, 1, L, C), CONV_2D with a 1 x kernel filter (out, 1,
  kernel, in), ReLU fused; max pooling: MAX_POOL_2D 1 x size; flatten: RESHAPE.

The int8 model is full-integer: int8 input and output tensors with the model's own
qparams, per-channel symmetric int8 weights (quantized_dimension 0) and int32 biases,
so it also runs on TFLite Micro. Batch size is 1 in the file (shape_signature -1);
interpreters resize the input for bigger batches.
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

SCHEMA_VERSION = 3
BUFFER_ALIGN = 16  # the schema's force_align for buffer data; MCUs fault on unaligned loads


def to_tflite(arch: dict[str, Any], weights: Weights, int8: bool = False) -> bytes:
    """A .tflite flatbuffer; int8=True needs activation ranges (QAT or `calibrate`)."""
    if int8:
        return tflite_from_quantized(quantized_graph(arch, weights))
    return tflite_from_graph(float_graph(arch, weights))


def tflite_from_graph(graph: Graph) -> bytes:
    """The float32 .tflite of a Graph."""
    return _TfliteBuilder(graph, None).build()


def tflite_from_quantized(qgraph: QuantizedGraph) -> bytes:
    """The full-integer int8 .tflite of a QuantizedGraph."""
    return _TfliteBuilder(qgraph.graph, qgraph).build()


def _schema_and_flatbuffers() -> tuple[Any, Any]:
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise ImportError("TFLite export needs ai-edge-litert: pip install 'fedge[litert]'") \
            from exc
    return schema_py_generated, flatbuffers


class _TfliteBuilder:
    """Collects tensors, buffers, operator codes and operators while walking the ops once."""

    def __init__(self, graph: Graph, qgraph: QuantizedGraph | None) -> None:
        self.s, self.flatbuffers = _schema_and_flatbuffers()
        self.graph, self.qgraph = graph, qgraph
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.s.BufferT()]  # buffer 0: the empty sentinel
        self.opcodes: list[Any] = []
        self.operators: list[Any] = []
        self._opcode_index: dict[int, int] = {}

    def build(self) -> bytes:
        s = self.s
        act_type = s.TensorType.INT8 if self.qgraph else s.TensorType.FLOAT32
        qp = self.qgraph.input if self.qgraph else None
        x = self._tensor("x", self.graph.input_shape, act_type, quant=_per_tensor(s, qp))
        first = x
        for index, op in enumerate(self.graph.ops):
            x = self._op(index, op, x)
        self.tensors[x].name = "logits"
        subgraph = s.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs = [first], [x]
        subgraph.name = "main"
        model = s.ModelT()
        model.version = SCHEMA_VERSION
        model.description = "fedge"
        model.operatorCodes, model.subgraphs, model.buffers = (
            self.opcodes, [subgraph], self.buffers)
        builder = self.flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    # ------------------------------------------------------------ one op
    def _op(self, index: int, op: Any, x: int) -> int:
        if isinstance(op, DenseOp):
            return self._dense(index, op, x)
        if isinstance(op, Conv1DOp):
            return self._conv(index, op, x)
        if isinstance(op, MaxPool1DOp):
            return self._maxpool(index, op, x)
        if isinstance(op, FlattenOp):
            return self._reshape(index, x, self.graph.shapes[index])
        raise TypeError(f"unknown op {op!r}")

    def _dense(self, index: int, op: DenseOp, x: int) -> int:
        s = self.s
        weight, bias = self._weight_and_bias(index, op.name, op.weight.T, op.bias)
        y = self._activation(index, op.name)
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = _fused(s, op.relu)
        self._operator(s.BuiltinOperator.FULLY_CONNECTED, [x, weight, bias], [y],
                       s.BuiltinOptions.FullyConnectedOptions, options,
                       version=4 if self.qgraph else 1)
        return y

    def _conv(self, index: int, op: Conv1DOp, x: int) -> int:
        s = self.s
        length, channels = self.graph.shape_before(index)
        x = self._reshape(index - 1, x, (1, length, channels))
        # (kernel, in, out) -> (out, 1, kernel, in): an OHWI filter one row high.
        weight, bias = self._weight_and_bias(
            index, op.name, op.weight.transpose(2, 0, 1)[:, None, :, :], op.bias)
        out_length, out_channels = self.graph.shapes[index]
        y = self._activation(index, f"{op.name}.nhwc", (1, out_length, out_channels))
        options = s.Conv2DOptionsT()
        options.padding = s.Padding.VALID
        options.strideH, options.strideW = 1, op.stride
        options.fusedActivationFunction = _fused(s, op.relu)
        self._operator(s.BuiltinOperator.CONV_2D, [x, weight, bias], [y],
                       s.BuiltinOptions.Conv2DOptions, options,
                       version=3 if self.qgraph else 1)
        return self._reshape(index, y, self.graph.shapes[index])

    def _maxpool(self, index: int, op: MaxPool1DOp, x: int) -> int:
        s = self.s
        length, channels = self.graph.shape_before(index)
        x = self._reshape(index - 1, x, (1, length, channels))
        out_length, out_channels = self.graph.shapes[index]
        y = self._activation(index, f"maxpool{index}.nhwc", (1, out_length, out_channels))
        options = s.Pool2DOptionsT()
        options.padding = s.Padding.VALID
        options.strideH, options.strideW = 1, op.size
        options.filterHeight, options.filterWidth = 1, op.size
        self._operator(s.BuiltinOperator.MAX_POOL_2D, [x], [y],
                       s.BuiltinOptions.Pool2DOptions, options,
                       version=2 if self.qgraph else 1)
        return self._reshape(index, y, self.graph.shapes[index])

    def _reshape(self, index: int, x: int, shape: tuple[int, ...]) -> int:
        """RESHAPE to (batch, *shape), keeping the qparams of op `index`'s output."""
        s = self.s
        target = [-1, *shape]
        new_shape = self._tensor(f"shape{len(self.tensors)}", (len(target),),
                                 s.TensorType.INT32, data=np.array(target, np.int32),
                                 batch=False)
        y = self._activation(index, f"reshape{len(self.tensors)}", shape)
        options = s.ReshapeOptionsT()
        options.newShape = target
        self._operator(s.BuiltinOperator.RESHAPE, [x, new_shape], [y],
                       s.BuiltinOptions.ReshapeOptions, options)
        return y

    # ------------------------------------------------------------ tensors
    def _activation(self, index: int, name: str, shape: tuple[int, ...] | None = None) -> int:
        """The output tensor of op `index` (index -1: the model input), float or int8."""
        s = self.s
        shape = self.graph.shapes[index] if shape is None else shape
        if self.qgraph is None:
            return self._tensor(name, shape, s.TensorType.FLOAT32)
        qp = self.qgraph.input if index < 0 else self.qgraph.outputs[index]
        return self._tensor(name, shape, s.TensorType.INT8, quant=_per_tensor(s, qp))

    def _weight_and_bias(self, index: int, name: str, weight: np.ndarray,
                         bias: np.ndarray) -> tuple[int, int]:
        """Constant tensors in the TFLite layout `weight` already has (out channel first)."""
        s = self.s
        if self.qgraph is None:
            return (self._const(f"{name}.weight", weight.astype(np.float32),
                                s.TensorType.FLOAT32),
                    self._const(f"{name}.bias", bias.astype(np.float32), s.TensorType.FLOAT32))
        layer = self.qgraph.layers[index]
        assert layer is not None
        weight_q = (layer.weight_q.T if isinstance(layer.op, DenseOp)
                    else layer.weight_q.transpose(2, 0, 1)[:, None, :, :])
        assert weight_q.shape == weight.shape
        return (self._const(f"{name}.weight", weight_q.astype(np.int8), s.TensorType.INT8,
                            _per_channel(s, layer.weight_scale)),
                self._const(f"{name}.bias", layer.bias_q.astype(np.int32), s.TensorType.INT32,
                            _per_channel(s, layer.bias_scale)))

    def _const(self, name: str, array: np.ndarray, dtype: int, quant: Any = None) -> int:
        return self._tensor(name, array.shape, dtype, data=array, quant=quant, batch=False)

    def _tensor(self, name: str, shape: tuple[int, ...], dtype: int,
                data: np.ndarray | None = None, quant: Any = None, batch: bool = True) -> int:
        tensor = self.s.TensorT()
        tensor.name = name
        tensor.type = dtype
        if batch:
            tensor.shape = [1, *shape]
            tensor.shapeSignature = [-1, *shape]
        else:
            tensor.shape = list(shape)
        tensor.quantization = quant
        if data is not None:
            tensor.buffer = len(self.buffers)
            little_endian = data.astype(data.dtype.newbyteorder("<"), order="C")
            self.buffers.append(_AlignedBuffer(self.s, little_endian.tobytes()))
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def _operator(self, code: int, inputs: list[int], outputs: list[int], options_type: int,
                  options: Any, version: int = 1) -> None:
        op = self.s.OperatorT()
        op.opcodeIndex = self._opcode(code, version)
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)

    def _opcode(self, code: int, version: int) -> int:
        if code not in self._opcode_index:
            opcode = self.s.OperatorCodeT()
            opcode.builtinCode = code
            opcode.deprecatedBuiltinCode = min(code, 127)
            opcode.version = version
            self._opcode_index[code] = len(self.opcodes)
            self.opcodes.append(opcode)
        return self._opcode_index[code]


def _per_tensor(s: Any, qp: QParams | None) -> Any:
    if qp is None:
        return None
    quant = s.QuantizationParametersT()
    quant.scale, quant.zeroPoint = [float(qp.scale)], [int(qp.zero_point)]
    return quant


def _per_channel(s: Any, scales: np.ndarray) -> Any:
    quant = s.QuantizationParametersT()
    quant.scale = [float(v) for v in scales]
    quant.zeroPoint = [0] * len(scales)
    quant.quantizedDimension = 0
    return quant


def _fused(s: Any, relu: bool) -> int:
    return s.ActivationFunctionType.RELU if relu else s.ActivationFunctionType.NONE


class _AlignedBuffer:
    """A BufferT whose data starts on a 16-byte boundary, as the schema's force_align asks.

    The generated BufferT.Pack aligns data to 1 byte only; TFLite Micro reads int32 biases
    and float weights in place, which faults on MCUs without unaligned loads.
    """

    def __init__(self, schema: Any, data: bytes) -> None:
        self.schema, self.data = schema, data

    def Pack(self, builder: Any) -> int:  # the name ModelT.Pack calls
        builder.StartVector(1, len(self.data), BUFFER_ALIGN)
        builder.head = builder.head - len(self.data)
        builder.Bytes[builder.head : builder.head + len(self.data)] = self.data
        data = builder.EndVector()
        self.schema.BufferStart(builder)
        self.schema.BufferAddData(builder, data)
        return self.schema.BufferEnd(builder)
