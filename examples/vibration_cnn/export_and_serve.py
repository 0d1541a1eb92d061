"""After the federation: export the final global model and serve it as int8 on held-out data.

Three ways to run the same trained weights, scored on the same held-out windows:

- float: the float32 network (the QAT model's weights without fake quantization), what
  the float ONNX file computes;
- QAT numpy: the trainer's own forward, which fake-quantizes weights and activations
  (the int8 simulation the gateway scores every round with);
- int8 onnxruntime: the int8 QDQ ONNX file, served by a Predictor.

The int8 model should predict what the QAT forward predicts (that is what QAT trained
for), and score within a point or two of the float model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.export import to_onnx
from edge_client.export.runtimes import OnnxModel
from edge_client.predictor import Predictor
from edge_client.training import NumpyTrainer, build_model
from examples.vibration_cnn.synthetic import CLASSES


@dataclass(frozen=True)
class FinalModel:
    version: int
    arch: dict[str, Any]
    weights: dict[str, np.ndarray]


def float_twin(model: FinalModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The float32 network with the same weights: no `qat`, no activation ranges."""
    arch = {k: v for k, v in model.arch.items() if k != "qat"}
    weights = {k: v for k, v in model.weights.items() if not k.endswith(".range")}
    return arch, weights


def numpy_logits(arch: dict[str, Any], weights: dict[str, np.ndarray],
                 x: np.ndarray) -> np.ndarray:
    trainer = NumpyTrainer(build_model(arch))
    trainer.set_weights(weights)
    return np.concatenate([trainer.model.forward(x[i : i + 1024])
                           for i in range(0, len(x), 1024)])


def export_and_serve(model: FinalModel, x_test: np.ndarray, y_test: np.ndarray,
                     out_dir: Path | None) -> dict[str, Any]:
    """Write the float and int8 ONNX files (when `out_dir` is given), serve int8 with a
    Predictor in onnxruntime, and compare it with the numpy forwards."""
    float_arch, float_weights = float_twin(model)
    onnx_float = to_onnx(float_arch, float_weights)
    onnx_int8 = to_onnx(model.arch, model.weights, int8=True)
    files = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in (("vibration_cnn_float32.onnx", onnx_float),
                           ("vibration_cnn_int8.onnx", onnx_int8)):
            (out_dir / name).write_bytes(data)
            files[name] = str(out_dir / name)

    predictor = Predictor(runtime="onnxruntime", int8=True)
    predictor.load(model.version, model.arch, model.weights)
    int8_pred = predictor.predict(x_test)
    # the file on disk is the model the Predictor serves: same logits, bit for bit
    from_file = OnnxModel(onnx_int8, True, tuple(model.arch["input_shape"])).logits(x_test)
    float_pred = numpy_logits(float_arch, float_weights, x_test).argmax(axis=1)
    qat_pred = numpy_logits(model.arch, model.weights, x_test).argmax(axis=1)
    return {
        "model_version": model.version,
        "test_windows": len(y_test),
        "float_accuracy": _accuracy(float_pred, y_test),
        "qat_numpy_accuracy": _accuracy(qat_pred, y_test),
        "int8_onnxruntime_accuracy": _accuracy(int8_pred, y_test),
        "int8_vs_qat_numpy_argmax_agreement": _accuracy(int8_pred, qat_pred),
        "int8_vs_float_argmax_agreement": _accuracy(int8_pred, float_pred),
        "int8_file_matches_predictor": bool(np.array_equal(from_file,
                                                           predictor.logits(x_test))),
        "int8_recall_per_class": {name: _accuracy(int8_pred[y_test == c], y_test[y_test == c])
                                  for c, name in enumerate(CLASSES) if (y_test == c).any()},
        "sizes_bytes": {"float32_weights": int(sum(w.nbytes for w in float_weights.values())),
                        "onnx_float32": len(onnx_float), "onnx_int8": len(onnx_int8)},
        "parameters": int(sum(w.size for w in float_weights.values())),
        "files": files,
    }


def _accuracy(predicted: np.ndarray, expected: np.ndarray) -> float:
    return round(float((predicted == expected).mean()), 4)
