"""Export structure and bad input: what the ONNX and TFLite files hold, and clear errors."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as tfl
from onnx import numpy_helper

from edge_client.export import (
    ExportError,
    float_graph,
    quantized_graph,
    to_c_header,
    to_onnx,
    to_tflite,
)
from edge_client.export import graph as graph_module
from edge_client.export.graph import Conv1DOp, DenseOp, FlattenOp, MaxPool1DOp
from edge_client.export.int8_reference import int8_logits
from edge_client.training import Dense, Sequential, act_qparams, build_model, quantize_weight
from tests.unit.export_models import CNN, MLP, calibrated, qat, trained, vibration

SMALL = {"kind": "mlp", "sizes": [6, 5, 3]}


def _weights(arch: dict, seed: int = 0) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in build_model(arch, seed).params().items()}


# ------------------------------------------------------------ the graph
def test_the_cnn_graph_fuses_relus_and_tracks_shapes():
    graph = float_graph(CNN, _weights(CNN))
    assert [type(op) for op in graph.ops] == [Conv1DOp, MaxPool1DOp, FlattenOp, DenseOp,
                                              DenseOp]
    conv, _, _, hidden, logits = graph.ops
    assert conv.relu and hidden.relu and not logits.relu
    assert graph.shapes == ((124, 8), (62, 8), (496,), (32,), (4,))
    assert graph.input_range is None and not graph.has_ranges


def test_a_qat_graph_carries_each_activation_range_from_the_weights():
    arch = qat(CNN)
    weights = _weights(arch)
    weights["aq0.range"][:] = [-2.0, 3.0]
    weights["aq1.range"][:] = [0.0, 5.0]
    graph = float_graph(arch, weights)
    assert graph.input_range == (-2.0, 3.0) and graph.ops[0].out_range == (0.0, 5.0)
    assert graph.has_ranges


def test_int8_uses_the_models_own_qparams_and_the_training_weight_math():
    arch, weights = trained("mlp-qat")
    qg = quantized_graph(arch, weights)
    assert (qg.input.scale, qg.input.zero_point) == act_qparams(*weights["aq0.range"])
    assert (qg.output.scale, qg.output.zero_point) == act_qparams(*weights["aq2.range"])
    w_q, scales = quantize_weight(weights["dense0.weight"])
    assert np.array_equal(qg.layers[0].weight_q, w_q)
    assert np.array_equal(qg.layers[0].weight_scale, scales)
    assert qg.layers[1].input == qg.layers[0].output


# ------------------------------------------------------------ ONNX
def _initializers(data: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_from_string(data)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_float_onnx_is_nwc_in_with_a_transposed_conv_weight():
    weights = _weights(CNN, seed=3)
    model = onnx.load_from_string(to_onnx(CNN, weights))
    ops = [n.op_type for n in model.graph.node]
    assert ops[:2] == ["Transpose", "Conv"] and "MaxPool" in ops and "Gemm" in ops
    assert ops.index("Transpose", 1) < ops.index("Flatten")  # back to NWC before flattening
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["n", 128, 3]
    inits = _initializers(model.SerializeToString())
    assert np.array_equal(inits["conv0.weight"], weights["conv0.weight"].transpose(2, 1, 0))
    assert np.array_equal(inits["dense0.weight"], weights["dense0.weight"].T)


def test_int8_onnx_has_int8_per_channel_weights_and_int32_biases():
    arch, weights = trained("cnn-qat")
    data = to_onnx(arch, weights, int8=True)
    model = onnx.load_from_string(data)
    inits = _initializers(data)
    qg = quantized_graph(arch, weights)
    assert inits["conv0.weight_q"].dtype == np.int8
    assert inits["conv0.bias_q"].dtype == np.int32
    assert np.array_equal(inits["conv0.weight_q"], qg.layers[0].weight_q.transpose(2, 1, 0))
    assert np.allclose(inits["dense1.weight_scale"], qg.layers[4].weight_scale)
    weight_dq = [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_q")]
    assert len(weight_dq) == 3
    assert all(a.name == "axis" and a.i == 0 for n in weight_dq for a in n.attribute)
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert float(inits[first_q.input[1]]) == pytest.approx(qg.input.scale)
    assert int(inits[first_q.input[2]]) == qg.input.zero_point


# ------------------------------------------------------------ TFLite
def _tflite(data: bytes):
    assert data[4:8] == b"TFL3"
    return tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)


def _ops(model) -> list[int]:
    codes = [c.builtinCode for c in model.operatorCodes]
    return [codes[op.opcodeIndex] for op in model.subgraphs[0].operators]


def test_float_tflite_runs_conv_as_a_one_row_conv2d():
    model = _tflite(to_tflite(CNN, _weights(CNN)))
    op = tfl.BuiltinOperator
    assert _ops(model) == [op.RESHAPE, op.CONV_2D, op.RESHAPE, op.RESHAPE, op.MAX_POOL_2D,
                           op.RESHAPE, op.RESHAPE, op.FULLY_CONNECTED, op.FULLY_CONNECTED]
    graph = model.subgraphs[0]
    conv = graph.operators[1]
    assert list(graph.tensors[conv.inputs[1]].shape) == [8, 1, 5, 3]  # OHWI
    assert conv.builtinOptions.fusedActivationFunction == tfl.ActivationFunctionType.RELU
    x = graph.tensors[graph.inputs[0]]
    assert list(x.shape) == [1, 128, 3] and list(x.shapeSignature) == [-1, 128, 3]


def test_int8_tflite_is_full_integer_with_per_channel_weights():
    arch, weights = trained("mlp-qat")
    qg = quantized_graph(arch, weights)
    model = _tflite(to_tflite(arch, weights, int8=True))
    graph = model.subgraphs[0]
    x, y = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    assert x.type == y.type == tfl.TensorType.INT8
    assert list(x.quantization.zeroPoint) == [qg.input.zero_point]
    assert list(y.quantization.scale) == pytest.approx([qg.output.scale])
    fc = graph.operators[0]
    weight, bias = graph.tensors[fc.inputs[1]], graph.tensors[fc.inputs[2]]
    assert weight.type == tfl.TensorType.INT8 and bias.type == tfl.TensorType.INT32
    assert weight.quantization.quantizedDimension == 0
    assert len(weight.quantization.scale) == 1333 and set(weight.quantization.zeroPoint) == {0}
    assert np.allclose(bias.quantization.scale, qg.layers[0].bias_scale)
    assert all(op.builtinCode != tfl.BuiltinOperator.QUANTIZE for op in model.operatorCodes)


def test_tflite_buffers_start_on_16_byte_boundaries():
    data = to_tflite(*trained("cnn-qat"), int8=True)
    root = tfl.Model.GetRootAs(data, 0)
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    offsets = [root.Buffers(i).DataAsNumpy().__array_interface__["data"][0] - base
               for i in range(1, root.BuffersLength()) if root.Buffers(i).DataLength()]
    assert offsets and all(offset % 16 == 0 for offset in offsets)


# ------------------------------------------------------------ C header
def test_c_header_holds_the_bytes_aligned_with_their_length():
    data = to_tflite(SMALL, _weights(SMALL))
    header = to_c_header(data, "g_model")
    assert "alignas(16) const unsigned char g_model[] = {" in header
    assert f"const unsigned int g_model_len = {len(data)};" in header
    body = header[header.index("{") + 1 : header.index("};")]
    assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", body)) == data


@pytest.mark.parametrize(("data", "name", "match"), [
    (b"\x00" * 16, "model", "TFL3"),
    (None, "1model", "C identifier"),
    (None, "my-model", "C identifier"),
    (None, "int", "keyword"),
    (None, "new", "keyword"),
])
def test_c_header_refuses_non_tflite_bytes_and_bad_names(data, name, match):
    data = data if data is not None else to_tflite(SMALL, _weights(SMALL))
    with pytest.raises(ValueError, match=match):
        to_c_header(data, name)


@pytest.mark.parametrize(("file", "name"), [
    ("model_data.h", "model_data"), ("2-b.h", "m_2_b"), ("int.h", "m_int"),
    ("class.h", "m_class"), ("modèle.h", "mod_le"), (".h", "model")])
def test_fedge_export_names_the_array_after_the_file(file, name):
    from pathlib import Path

    from fedge.export_cli import c_name

    assert c_name(Path(file)) == name
    assert to_c_header(to_tflite(SMALL, _weights(SMALL)), name)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("export", [to_onnx, to_tflite])
def test_an_unknown_layer_type_is_a_clear_error(export):
    arch = {**CNN, "layers": [*CNN["layers"][:-1], {"type": "lstm", "units": 4}]}
    with pytest.raises(ExportError, match="lstm"):
        export(arch, {})


def test_a_layer_export_cannot_express_is_named(monkeypatch):
    class Softmax:
        def params(self):
            return {}

    def build(arch, seed=0):
        return Sequential([Dense(6, 3, "dense0", np.random.default_rng(0)), Softmax()])

    monkeypatch.setattr(graph_module, "build_model", build)
    with pytest.raises(ExportError, match="Softmax cannot be exported"):
        float_graph(SMALL, _weights({"kind": "mlp", "sizes": [6, 3]}))


@pytest.mark.parametrize("arch", [None, [], {"sizes": [4, 2]}, {"kind": "tree"},
                                  {"kind": "mlp", "sizes": [4]}])
def test_an_arch_that_is_not_a_model_is_a_clear_error(arch):
    with pytest.raises(ExportError, match="arch"):
        to_onnx(arch, {})


def test_weights_missing_an_array_are_named():
    weights = _weights(SMALL)
    del weights["dense1.bias"]
    with pytest.raises(ExportError, match=r"do not match.*dense1\.bias"):
        to_tflite(SMALL, weights)


def test_weights_of_the_wrong_shape_are_named():
    weights = _weights(SMALL)
    weights["dense0.weight"] = np.zeros((6, 4), np.float32)
    with pytest.raises(ExportError, match=r"dense0\.weight.*\(6, 5\)"):
        to_onnx(SMALL, weights)


@pytest.mark.parametrize("int8", [False, True])
def test_a_diverged_model_is_refused(int8):
    arch, weights = calibrated("cnn")
    weights["conv0.weight"][0, 0, 0] = np.nan
    weights["dense0.bias"][1] = np.inf
    with pytest.raises(ExportError, match=r"\['conv0.weight', 'dense0.bias'\].*NaN"):
        to_onnx(arch, weights, int8=int8)


def test_weights_of_a_different_model_are_refused():
    with pytest.raises(ExportError, match="do not match"):
        to_onnx(CNN, _weights(MLP))


@pytest.mark.parametrize("export", [to_onnx, to_tflite])
def test_int8_of_a_model_without_ranges_asks_for_calibration(export):
    with pytest.raises(ExportError, match="calibration"):
        export(*trained("mlp"), int8=True)


def test_a_calibrated_float_model_exports_to_int8():
    arch, weights = calibrated("cnn")
    assert arch["qat"] is True
    assert _tflite(to_tflite(arch, weights, int8=True)).subgraphs[0].operators


def test_int8_of_a_fresh_qat_model_says_it_has_seen_no_data():
    arch = qat(SMALL)  # every range starts at [0, 0]
    with pytest.raises(ExportError, match=r"input, the output of dense0.*\[0, 0\].*train"):
        to_tflite(arch, _weights(arch), int8=True)
    assert to_tflite(arch, _weights(arch))  # float export does not need ranges


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [2.0, 1.0], [-np.inf, 0.0]])
def test_a_broken_activation_range_is_refused(bad):
    arch = qat(SMALL)
    weights = _weights(arch)
    weights["aq1.range"] = np.array(bad, np.float32)
    with pytest.raises(ExportError, match="aq1"):
        to_onnx(arch, weights, int8=True)


def test_a_dead_channel_keeps_its_bias_in_int8():
    """A channel whose weights are all zero outputs its bias; int8 must too."""
    arch, weights = calibrated("cnn")
    weights["dense1.weight"][:, 2] = 0.0
    weights["dense1.bias"][2] = 0.8
    x = vibration()[2][:20]
    qg = quantized_graph(arch, weights)
    logits = int8_logits(qg, x)
    assert np.abs(logits[:, 2] - 0.8).max() <= qg.output.scale  # one int8 step


def test_a_bias_int32_cannot_hold_is_refused_not_clipped():
    arch, weights = calibrated("cnn")
    weights["dense1.weight"][:, 2] = 1e-12  # near zero, not zero: a tiny weight scale
    weights["dense1.bias"][2] = 0.8
    with pytest.raises(ExportError, match=r"dense1: the bias of output channel\(s\) \[2\]"):
        quantized_graph(arch, weights)


def test_a_bias_that_leaves_no_room_in_the_int32_accumulator_is_refused():
    """The bias fits int32, but inputs at the range's edge would overflow the accumulator:
    refused at export, not an OverflowError (or a wrapped int32) on some predict later."""
    arch, weights = calibrated("cnn")
    weights["dense1.weight"][:, 2] = 1e-6  # every code 127 at scale 1e-6 / 127
    input_scale = quantized_graph(arch, weights).layers[-1].input.scale
    bias_scale = np.float32(input_scale) * np.float32(1e-6 / 127)
    weights["dense1.bias"][2] = (2**31 - 10_000) * float(bias_scale)
    with pytest.raises(ExportError, match=r"dense1: the bias of output channel\(s\) \[2\]"):
        quantized_graph(arch, weights)


# ------------------------------------------------------------ optional packages
def test_the_device_sdk_imports_no_runtime():
    code = ("import sys, edge_client.export, edge_client.predictor, edge_client.client; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'ai_edge_litert', "
            "'tflite_runtime', 'flatbuffers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "export", "extra"), [
    ("onnx", to_onnx, "fedge[onnx]"), ("ai_edge_litert", to_tflite, "fedge[litert]")])
def test_a_missing_exporter_package_names_its_extra(monkeypatch, module, export, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ImportError, match=re.escape(extra)):
        export(SMALL, _weights(SMALL))
