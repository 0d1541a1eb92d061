"""One model, loaded in one inference runtime, behind one small interface.

The Predictor and the benchmark use these; so do the tests that compare runtimes.
Each runtime is imported only when a model is loaded into it, and a missing one names
the extra to install. Every wrapper is safe to call from several threads: a runtime
that keeps per-call state (a TFLite interpreter, the numpy layers' caches) is locked.

Runtimes:
- "numpy": float via the trainer's own forward (for a QAT model that includes its fake
  quantization); int8 via the integer reference in int8_reference.
- "onnxruntime": the exported ONNX model, float or int8 QDQ.
- "litert": the exported .tflite in ai-edge-litert's interpreter, the default for
  .tflite because it runs under numpy 2.
- "tflite-runtime": the same .tflite in tflite-runtime's interpreter, for devices with
  numpy < 2 only (tflite-runtime 2.14 is built against numpy 1.x; under numpy 2 it
  imports but fails to create an interpreter).
"""

from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_client.export.graph import build_trained_model, float_graph
from edge_client.export.int8_reference import int8_logits
from edge_client.export.onnx_export import onnx_from_graph, onnx_from_quantized
from edge_client.export.quantized import QuantizedGraph, quantize_graph
from edge_client.export.tflite_export import tflite_from_graph, tflite_from_quantized
from edge_client.shared.weights import Weights
from edge_client.training.quantize import dequantize_act, quantize_act

RUNTIMES = ("numpy", "onnxruntime", "litert", "tflite-runtime")
_NUMPY_CHUNK = 1024  # rows per numpy forward pass; bounds memory on small devices


@dataclass(frozen=True)
class RuntimeOptions:
    """How a runtime runs: what a device app tunes beside the runtime's name."""

    threads: int | None = None
    """Threads per call in onnxruntime and the TFLite interpreters; None: their default.
    numpy's BLAS reads OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS) at import instead."""
    ort_fuse_int8: bool | None = None
    """onnxruntime's fused int8 kernels; None: only where they are exact (see OnnxModel)."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


class InferenceModel(Protocol):
    """A loaded model: float input (n, *input_shape) -> float logits (n, classes)."""

    runtime: str
    int8: bool
    size_bytes: int  # the serialized model (ONNX, .tflite) or the numpy arrays it holds

    def logits(self, x: np.ndarray) -> np.ndarray: ...


def load_model(runtime: str, arch: dict[str, Any], weights: Weights, int8: bool = False,
               options: RuntimeOptions | None = None) -> InferenceModel:
    """Export (arch, weights) for `runtime` and load it there.

    int8 needs activation ranges in the weights (QAT, or calibrate first); ExportError
    otherwise. ImportError names the extra when the runtime is not installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not known; use one of {', '.join(RUNTIMES)}")
    options = options or RuntimeOptions()
    graph = float_graph(arch, weights)
    qgraph = quantize_graph(graph) if int8 else None
    if runtime == "numpy":
        if qgraph is not None:
            return NumpyInt8Model(qgraph)
        return NumpyFloatModel(build_trained_model(arch, weights), graph.input_shape)
    if runtime == "onnxruntime":
        data = onnx_from_quantized(qgraph) if qgraph else onnx_from_graph(graph)
        return OnnxModel(data, int8, graph.input_shape, options.ort_fuse_int8, options.threads)
    data = tflite_from_quantized(qgraph) if qgraph else tflite_from_graph(graph)
    return TfliteModel(data, runtime, graph.input_shape, options.threads)


class NumpyFloatModel:
    """The trainer's Sequential in eval mode; its layers cache inputs, hence the lock."""

    runtime, int8 = "numpy", False

    def __init__(self, model: Any, input_shape: tuple[int, ...]) -> None:
        self.model, self.input_shape = model, input_shape
        self.size_bytes = sum(p.nbytes for p in model.params().values())
        self._lock = threading.Lock()

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.input_shape)
        with self._lock:
            parts = [self.model.forward(x[i : i + _NUMPY_CHUNK])
                     for i in range(0, len(x), _NUMPY_CHUNK)]
        return np.concatenate(parts).astype(np.float32, copy=False)


class NumpyInt8Model:
    """The integer reference: no state between calls, so no lock."""

    runtime, int8 = "numpy", True

    def __init__(self, qgraph: QuantizedGraph) -> None:
        self.qgraph = qgraph
        self.size_bytes = sum(layer.weight_q.nbytes + layer.bias_q.nbytes
                              + layer.weight_scale.nbytes
                              for layer in qgraph.layers if layer is not None)

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.qgraph.graph.input_shape)
        return np.concatenate([int8_logits(self.qgraph, x[i : i + _NUMPY_CHUNK])
                               for i in range(0, len(x), _NUMPY_CHUNK)])


class OnnxModel:
    """An onnxruntime session; `run` is thread-safe.

    onnxruntime fuses an int8 QDQ graph into integer kernels (QGemm, QLinearConv). On
    x86-64 CPUs without VNNI (AVX2 only) those multiply u8 x s8 pairs into a 16-bit
    intermediate that saturates (onnxruntime issue 16105), so the logits drift from
    the integer reference by several steps and about 1% of digits predictions change.
    fuse_int8=None fuses only where that cannot happen (not x86-64, or VNNI present);
    unfused, onnxruntime folds the weights' DequantizeLinear and runs the QDQ graph's
    exact math in float. True or False forces the choice.
    """

    runtime = "onnxruntime"

    def __init__(self, data: bytes, int8: bool, input_shape: tuple[int, ...],
                 fuse_int8: bool | None = None, threads: int | None = None) -> None:
        ort = _import("onnxruntime", "onnxruntime", "onnx")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.fused = int8 and (fused_int8_is_exact() if fuse_int8 is None else fuse_int8)
        if int8 and not self.fused:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.int8, self.input_shape, self.size_bytes = int8, input_shape, len(data)
        self.data = data

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.input_shape)
        return self.session.run(None, {"x": x})[0]


def fused_int8_is_exact(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """False on x86-64 without VNNI, where onnxruntime's fused int8 GEMM saturates."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # arm64 kernels widen to 32 bits (and the Pi is where devices run)
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return True  # cannot tell: trust the runtime
    return "avx512_vnni" in flags or "avx_vnni" in flags


class TfliteModel:
    """A .tflite in LiteRT's or tflite-runtime's interpreter; int8 in and out if quantized.

    The interpreter keeps its tensors between calls, so calls are serialized; it is
    resized only when the batch size changes.
    """

    def __init__(self, data: bytes, runtime: str, input_shape: tuple[int, ...],
                 threads: int | None = None) -> None:
        self.runtime, self.input_shape, self.size_bytes = runtime, input_shape, len(data)
        self.data = data
        self.interpreter = _interpreter(runtime, data, threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.int8 = self._input["dtype"] == np.int8
        self._batch = 0
        self._lock = threading.Lock()

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, self.input_shape)
        if self.int8:
            scale, zero_point = self._input["quantization"]
            x = quantize_act(x, scale, zero_point)
        with self._lock:
            self._resize(len(x))
            self.interpreter.set_tensor(self._input["index"], x)
            self.interpreter.invoke()
            out = self.interpreter.get_tensor(self._output["index"]).copy()
        if self.int8:
            scale, zero_point = self._output["quantization"]
            return dequantize_act(out, scale, zero_point)
        return out

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"],
                                                 [batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            self._batch = batch


def check_input(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """float32, C-contiguous, shaped (n, *input_shape) with n >= 1, finite; ValueError
    otherwise. Strings, objects or complex numbers would be cast or fail deep in a
    runtime, and a NaN would come back as some class id (an int8 cast of NaN is undefined).
    """
    given = np.asarray(x)
    if given.dtype.kind not in "biuf":
        raise ValueError(f"expected real numbers (float or int), got dtype {given.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
        x = np.ascontiguousarray(given, dtype=np.float32)
    if x.ndim != len(input_shape) + 1 or x.shape[1:] != tuple(input_shape) or len(x) == 0:
        expected = ", ".join(str(d) for d in input_shape)
        raise ValueError(f"expected input of shape (n, {expected}) with n >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"input holds {bad} NaN or infinite values (after conversion to "
                         "float32)")
    return x


def _interpreter(runtime: str, data: bytes, threads: int | None) -> Any:
    if runtime == "litert":
        module = _import("ai_edge_litert.interpreter", "ai-edge-litert", "litert")
        return module.Interpreter(model_content=data, num_threads=threads)
    module = _import("tflite_runtime.interpreter", "tflite-runtime", None)
    try:
        return module.Interpreter(model_content=data, num_threads=threads)
    except Exception as exc:  # its C extension fails in many ways under numpy 2
        raise RuntimeError(f"tflite-runtime could not create an interpreter under numpy "
                           f"{np.__version__} ({type(exc).__name__}: {exc}); tflite-runtime "
                           "2.14 needs numpy < 2: use runtime='litert'") from exc


def _import(module: str, package: str, extra: str | None) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install 'fedge[{extra}]'" if extra else f"pip install {package} (numpy < 2)"
        raise ImportError(f"this runtime needs {package}: {how}") from exc
