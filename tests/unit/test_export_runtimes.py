"""numpy, onnxruntime and LiteRT agree on the digits MLP and the 1D-CNN (issue 5's must-show).

Float: max |logit difference| <= 1e-4. Int8: argmax agreement >= 99% on the test set
between ORT int8, LiteRT int8 and the numpy integer reference, for QAT models and for
float models quantized after training from a calibration set. Plus the .tflite on
TFLite Micro's interpreter, and tflite-runtime where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.export import quantized_graph, runtimes, to_tflite
from edge_client.export.int8_reference import run_int8
from edge_client.export.onnx_export import onnx_from_quantized
from edge_client.export.runtimes import OnnxModel, fused_int8_is_exact, load_model
from edge_client.training import NumpyTrainer, build_model, calibrate
from tests.unit.export_models import calibrated, data_for, trained

FLOAT_TOL = 1e-4
AGREEMENT = 0.99


def _test_set(arch: dict) -> tuple[np.ndarray, np.ndarray]:
    _, _, x_test, y_test = data_for(arch)
    return x_test, y_test


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def _int8_model(key: str) -> tuple[dict, dict]:
    """"mlp-qat" and "cnn-qat" were trained with QAT; "mlp-ptq" and "cnn-ptq" calibrated."""
    name, how = key.split("-")
    return trained(f"{name}-qat") if how == "qat" else calibrated(name)


@pytest.mark.parametrize("key", ["mlp", "cnn"])
def test_float_logits_agree_across_runtimes(key):
    arch, weights = trained(key)
    x, y = _test_set(arch)
    numpy_logits = load_model("numpy", arch, weights).logits(x)
    assert (numpy_logits.argmax(axis=1) == y).mean() > 0.85  # a real model, not a constant
    for runtime in ("onnxruntime", "litert"):
        logits = load_model(runtime, arch, weights).logits(x)
        assert logits.shape == numpy_logits.shape
        assert np.abs(logits - numpy_logits).max() <= FLOAT_TOL, runtime


@pytest.mark.parametrize("key", ["mlp-qat", "cnn-qat", "mlp-ptq", "cnn-ptq"])
def test_int8_predictions_agree_across_runtimes(key):
    arch, weights = _int8_model(key)
    x, y = _test_set(arch)
    logits = {runtime: load_model(runtime, arch, weights, int8=True).logits(x)
              for runtime in ("numpy", "onnxruntime", "litert")}
    assert (logits["numpy"].argmax(axis=1) == y).mean() > 0.85
    assert _agreement(logits["onnxruntime"], logits["numpy"]) >= AGREEMENT
    assert _agreement(logits["litert"], logits["numpy"]) >= AGREEMENT
    assert _agreement(logits["onnxruntime"], logits["litert"]) >= AGREEMENT


ODD_ARCHS = {
    "pool-first": {"kind": "sequential", "input_shape": [37, 2], "layers": [
        {"type": "maxpool1d", "size": 3}, {"type": "conv1d", "filters": 5, "kernel": 3},
        {"type": "flatten"}, {"type": "dense", "units": 3}]},
    "strided-stack": {"kind": "sequential", "input_shape": [41, 3], "layers": [
        {"type": "conv1d", "filters": 6, "kernel": 4, "stride": 2}, {"type": "relu"},
        {"type": "conv1d", "filters": 4, "kernel": 3, "stride": 3}, {"type": "relu"},
        {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 5},
        {"type": "relu"}, {"type": "dense", "units": 3}]},
    "pool-only": {"kind": "sequential", "input_shape": [9, 4], "layers": [
        {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}]},
    "flatten-only": {"kind": "sequential", "input_shape": [7, 3], "layers": [
        {"type": "flatten"}, {"type": "dense", "units": 4}]},
}


@pytest.mark.parametrize("name", sorted(ODD_ARCHS))
def test_odd_shapes_agree_too(name):
    """Pooling the raw input, strides, stacked convs, odd lengths: layouts, not luck."""
    arch = ODD_ARCHS[name]
    rng = np.random.default_rng(1)
    weights = NumpyTrainer(build_model(arch, seed=2)).get_weights()
    weights = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
               for k, v in weights.items()}
    x = rng.standard_normal((50, *arch["input_shape"])).astype(np.float32)
    reference = load_model("numpy", arch, weights).logits(x)
    for runtime in ("onnxruntime", "litert"):
        assert np.abs(load_model(runtime, arch, weights).logits(x) - reference).max() \
            <= FLOAT_TOL, runtime
    qat_arch, qat_weights = calibrate(arch, weights, x)
    qg = quantized_graph(qat_arch, qat_weights)
    codes = run_int8(qg, qg.input.quantize(x))
    for runtime in ("onnxruntime", "litert"):
        logits = load_model(runtime, qat_arch, qat_weights, int8=True).logits(x)
        steps = np.abs(logits - qg.output.dequantize(codes)) / qg.output.scale
        assert steps.max() <= 1.0 + 1e-3, runtime


@pytest.mark.parametrize("lo", [-0.005, -0.05, -0.3])
def test_a_relu_range_averaged_below_zero_exports_alike_everywhere(lo):
    """FedAvg and lossy codecs can give a ReLU's output range a slightly negative min, so
    the fused ReLU clamps at a zero point above -128: every runtime must clamp there too.
    Strided convs whose (L - k) % stride != 0, batch 1 and a batch size that changes."""
    arch = ODD_ARCHS["strided-stack"]
    rng = np.random.default_rng(3)
    weights = NumpyTrainer(build_model(arch, seed=2)).get_weights()
    weights = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
               for k, v in weights.items()}
    x = rng.standard_normal((30, *arch["input_shape"])).astype(np.float32)
    qat_arch, qat_weights = calibrate(arch, weights, x)
    for name in ("aq1", "aq2", "aq3"):  # the outputs of conv0, conv1 and dense0 (+ReLU)
        assert qat_weights[f"{name}.range"][0] == 0
        qat_weights[f"{name}.range"][0] = lo
    qg = quantized_graph(qat_arch, qat_weights)
    if lo <= -0.05:  # -0.005 is under half a step here: the zero point stays -128
        assert all(qp.zero_point > -128 for qp in qg.outputs[:-1])
    reference = load_model("numpy", qat_arch, qat_weights, int8=True).logits(x)
    fake_quant = load_model("numpy", qat_arch, qat_weights).logits(x)
    assert np.abs(fake_quant - reference).max() / qg.output.scale <= 2 + 1e-3
    for runtime in ("onnxruntime", "litert"):
        model = load_model(runtime, qat_arch, qat_weights, int8=True)
        for begin, end in ((0, 30), (0, 1), (7, 8), (0, 5), (0, 30)):
            steps = np.abs(model.logits(x[begin:end]) - reference[begin:end]) / qg.output.scale
            assert steps.max() <= 1.0 + 1e-3, (runtime, begin, end)


@pytest.mark.parametrize("key", ["mlp-qat", "cnn-ptq"])
def test_litert_int8_computes_the_integer_reference(key):
    """Same int8 codes to within one rounding step, on every output of the test set."""
    arch, weights = _int8_model(key)
    x, _ = _test_set(arch)
    qg = quantized_graph(arch, weights)
    steps = np.abs(load_model("litert", arch, weights, int8=True).logits(x)
                   - load_model("numpy", arch, weights, int8=True).logits(x)) / qg.output.scale
    assert steps.max() <= 1.0 + 1e-3


@pytest.mark.parametrize("fuse", [False, True])
def test_onnxruntime_int8_on_this_cpu(fuse):
    """Unfused, the QDQ graph computes the integer reference to a rounding step. Fused, its
    kernels are exact where fused_int8_is_exact() says so; elsewhere (AVX2 without VNNI)
    they saturate, which the default avoids by not fusing there."""
    arch, weights = _int8_model("mlp-qat")
    x, _ = _test_set(arch)
    qg = quantized_graph(arch, weights)
    session = OnnxModel(onnx_from_quantized(qg), True, qg.graph.input_shape, fuse_int8=fuse)
    steps = np.abs(session.logits(x)
                   - load_model("numpy", arch, weights, int8=True).logits(x)) / qg.output.scale
    if fuse and not fused_int8_is_exact():
        assert _agreement(session.logits(x), qg.output.dequantize(
            run_int8(qg, qg.input.quantize(x)))) >= 0.95  # saturated, yet still close
    else:
        assert steps.max() <= 1.0 + 1e-3


def test_vnni_decides_whether_x86_fuses_int8(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: fpu sse2 avx2 fma\n")
    assert not fused_int8_is_exact(cpuinfo)
    cpuinfo.write_text("flags\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert fused_int8_is_exact(cpuinfo)
    monkeypatch.setattr(runtimes.platform, "machine", lambda: "aarch64")
    assert fused_int8_is_exact(tmp_path / "missing")


@pytest.mark.parametrize("key", ["mlp-qat", "cnn-qat"])
def test_int8_export_reproduces_what_qat_trained(key):
    """The trainer's fake-quantized forward and the exported integer model pick the same class."""
    arch, weights = trained(key)
    x, _ = _test_set(arch)
    fake_quant = load_model("numpy", arch, weights).logits(x)
    assert _agreement(load_model("numpy", arch, weights, int8=True).logits(x),
                      fake_quant) >= AGREEMENT


@pytest.mark.parametrize("key", ["mlp-qat", "cnn-ptq"])
def test_int8_tflite_runs_on_tflite_micro(key):
    runtime = pytest.importorskip(
        "tflite_micro.python.tflite_micro.runtime",
        reason="tflite-micro is pinned to a dev build with x86_64 wheels only")
    arch, weights = _int8_model(key)
    x, _ = _test_set(arch)
    x = x[:40]  # TFLite Micro runs one sample per invoke
    qg = quantized_graph(arch, weights)
    interpreter = runtime.Interpreter.from_bytes(to_tflite(arch, weights, int8=True))
    codes = []
    for row in qg.input.quantize(x):
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        codes.append(interpreter.get_output(0))
    micro = np.concatenate(codes).astype(np.int32)
    assert np.abs(micro - run_int8(qg, qg.input.quantize(x))).max() <= 1


def test_tflite_runtime_agrees_with_litert_where_it_runs():
    pytest.importorskip("tflite_runtime.interpreter",
                        reason="tflite-runtime is not installed (it needs numpy < 2)")
    if int(np.__version__.split(".")[0]) >= 2:
        pytest.skip("tflite-runtime 2.14 cannot create an interpreter under numpy 2")
    arch, weights = trained("cnn")
    x, _ = _test_set(arch)
    assert np.abs(load_model("tflite-runtime", arch, weights).logits(x)
                  - load_model("litert", arch, weights).logits(x)).max() <= FLOAT_TOL
