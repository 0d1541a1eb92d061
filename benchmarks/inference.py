"""Inference latency and model size per runtime, float32 and int8, for two fedge models.

    .venv/bin/python benchmarks/inference.py [--repeats 200] [--threads 1]

Models: the digits MLP (64-1333-10, the demo's; digits split as the demo, seed 42) and
the contract's 1D-CNN (conv1d 8x5, maxpool 2, dense 32, dense 4) on synthetic 3-axis
vibration windows (128 x 3) generated here. Each is trained centrally (batch 32, lr 0.05,
momentum 0.5) as float32 for the float runtimes and with QAT for the int8 ones.

Runtimes: numpy float (the trainer's forward), numpy int8 (the integer reference),
onnxruntime float and int8, LiteRT float and int8, and onnxruntime int8 with its fused
kernels forced on (on x86-64 without VNNI they saturate; the default int8 session
fuses only where they are exact: see edge_client/export/runtimes.py). tflite-runtime
is added where it imports and runs (numpy < 2).

Latency: the median wall time of one call at batch 1 and at batch 256 over --repeats
calls (batch 256: a quarter as many), after warm-up; the runtimes take turns call by
call, so machine noise hits them alike. Size: the serialized model (ONNX, .tflite) or
the arrays numpy holds. Each row has its ratio to numpy float measured in this run,
its test accuracy, and its agreement with the numpy model of its precision (float: max
|logit difference|; int8: argmax agreement). Threads: --threads for onnxruntime and
LiteRT, and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS for numpy (set here before numpy is
imported unless already set). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200,
                        help="calls per runtime at batch 1 (a quarter as many at batch 256)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every runtime (a device core or two)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per model")
    return parser.parse_args()


ARGS = _arguments() if __name__ == "__main__" else None
if ARGS is not None:  # BLAS reads these when numpy is imported
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import json  # noqa: E402

import numpy as np  # noqa: E402

from edge_client.export.runtimes import (  # noqa: E402
    InferenceModel,
    RuntimeOptions,
    fused_int8_is_exact,
    load_model,
)
from edge_client.training import NumpyTrainer, TrainConfig, build_model  # noqa: E402
from fedge.datasets import load_digits, stratified_split  # noqa: E402

MLP = {"kind": "mlp", "sizes": [64, 1333, 10]}
CNN = {"kind": "sequential", "input_shape": [128, 3], "layers": [
    {"type": "conv1d", "filters": 8, "kernel": 5, "stride": 1}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 32}, {"type": "relu"}, {"type": "dense", "units": 4}]}
BIG_BATCH = 256
# (row name, runtime, int8, force onnxruntime int8 fusion)
RUNS = [
    ("numpy-float", "numpy", False, None),
    ("numpy-int8", "numpy", True, None),
    ("onnxruntime-float", "onnxruntime", False, None),
    ("onnxruntime-int8", "onnxruntime", True, None),
    ("onnxruntime-int8-fused", "onnxruntime", True, True),
    ("litert-float", "litert", False, None),
    ("litert-int8", "litert", True, None),
    ("tflite-runtime-float", "tflite-runtime", False, None),
    ("tflite-runtime-int8", "tflite-runtime", True, None),
]


def vibration(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Windows (n, 128, 3): class c vibrates at 2 + 3c cycles per window, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(128) / 128
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 3))
    gain = rng.uniform(0.5, 1.5, (n, 1, 3))
    x = gain * np.sin(2 * np.pi * (2 + 3 * y)[:, None, None] * t[None, :, None] + phase)
    x = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    split = n * 3 // 4
    return x[:split], y[:split], x[split:], y[split:]


def train(arch: dict, x: np.ndarray, y: np.ndarray, epochs: int) -> dict[str, np.ndarray]:
    trainer = NumpyTrainer(build_model(arch, seed=0))
    trainer.fit(x, y, TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.5))
    return trainer.get_weights()


def load_runs(arch: dict, x_train: np.ndarray, y_train: np.ndarray, epochs: int,
              threads: int) -> tuple[dict[str, InferenceModel], dict[str, str]]:
    """Every runtime that loads here, and why the others did not."""
    float_model = (arch, train(arch, x_train, y_train, epochs))
    qat_arch = {**arch, "qat": True}
    qat_model = (qat_arch, train(qat_arch, x_train, y_train, epochs))
    models: dict[str, InferenceModel] = {}
    skipped: dict[str, str] = {}
    for name, runtime, int8, fuse in RUNS:
        arch_, weights = qat_model if int8 else float_model
        options = RuntimeOptions(threads=threads, ort_fuse_int8=fuse)
        try:
            models[name] = load_model(runtime, arch_, weights, int8, options)
        except (ImportError, RuntimeError) as exc:
            skipped[name] = str(exc).splitlines()[0]
    return models, skipped


def latencies(models: dict[str, InferenceModel], x: np.ndarray, repeats: int) -> dict:
    """Median seconds per call of each model, taking turns call by call."""
    for model in models.values():  # warm-up: allocations, resizes, lazy inits
        for _ in range(3):
            model.logits(x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            began = time.perf_counter()
            model.logits(x)
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def job(name: str, arch: dict, data: tuple[np.ndarray, ...], args: argparse.Namespace) -> dict:
    x_train, y_train, x_test, y_test = data
    models, skipped = load_runs(arch, x_train, y_train, args.epochs, args.threads)
    one = latencies(models, x_test[:1], args.repeats)
    batch = np.resize(x_test, (BIG_BATCH, *x_test.shape[1:]))
    big = latencies(models, batch, max(5, args.repeats // 4))
    logits = {name: model.logits(x_test) for name, model in models.items()}
    base = "numpy-float"
    rows = {}
    for run, model in models.items():
        reference = logits["numpy-int8" if model.int8 else base]
        rows[run] = {
            "latency_batch1_us": round(one[run] * 1e6, 1),
            f"latency_batch{BIG_BATCH}_us": round(big[run] * 1e6, 1),
            "size_bytes": model.size_bytes,
            "latency_batch1_vs_numpy_float": round(one[run] / one[base], 3),
            f"latency_batch{BIG_BATCH}_vs_numpy_float": round(big[run] / big[base], 3),
            "size_vs_numpy_float": round(model.size_bytes / models[base].size_bytes, 3),
            "test_accuracy": round(float((logits[run].argmax(1) == y_test).mean()), 4),
            **_agreement(model.int8, logits[run], reference),
        }
        if model.runtime == "onnxruntime" and model.int8:
            rows[run]["fused_int8_kernels"] = bool(getattr(model, "fused", False))
    return {"model": name, "arch": arch, "test_samples": len(x_test), "runtimes": rows,
            "skipped": skipped}


def _agreement(int8: bool, logits: np.ndarray, reference: np.ndarray) -> dict:
    if int8:
        same = float((logits.argmax(1) == reference.argmax(1)).mean())
        return {"argmax_agreement_with_numpy_int8": round(same, 4)}
    return {"max_abs_logit_diff_vs_numpy_float": float(np.abs(logits - reference).max())}


def main(args: argparse.Namespace) -> None:
    x, y = load_digits()
    jobs = [job("digits-mlp-64-1333-10", MLP, stratified_split(x, y, 0.2, 42), args),
            job("vibration-1d-cnn", CNN, vibration(), args)]
    import onnxruntime

    print(json.dumps({
        "benchmark": "inference",
        "settings": {"repeats_batch1": args.repeats,
                     f"repeats_batch{BIG_BATCH}": max(5, args.repeats // 4),
                     "threads": args.threads, "epochs": args.epochs,
                     "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                    "onnxruntime_fused_int8_exact_here": fused_int8_is_exact()},
        "jobs": jobs,
    }, indent=2))


if __name__ == "__main__":
    main(ARGS)
