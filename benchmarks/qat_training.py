"""Quantization-aware training on the digits job: accuracy and epoch time, float vs QAT.

    .venv/bin/python benchmarks/qat_training.py [--hidden 1333] [--epochs 10] [--seeds 3]
                                                [--save DIR]

The demo's data and MLP (64-hidden-10, stratified 20% test split with seed 42), trained
centrally (no federation) with the demo's settings: batch 32, lr 0.1, momentum 0.5.
For each seed it trains the float model and the same model with qat=True from the same
initial weights and batch order, and reports test accuracy of

- float: the float model;
- qat: the QAT model evaluated as its int8 export runs, fake-quantized with frozen ranges;
- ptq: the float model after post-training calibration (`calibrate`) on the training set.

Epoch time: one epoch of float and one of QAT training, alternated `--timing-epochs`
times so machine noise hits both alike; the medians and their ratio. With --save, the
float, QAT and PTQ weights of seed 0 go to DIR as .npz plus arch .json (for checking the
int8 runtimes against these figures). Prints one JSON object.

On a shared machine, OPENBLAS_NUM_THREADS=1 gives steadier times (and is closer to a
one-core device); the JSON records the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edge_client.training import NumpyTrainer, TrainConfig, build_model, calibrate
from fedge.datasets import load_digits, stratified_split

SPLIT_SEED = 42  # the demo's


def train(arch: dict, seed: int, x: np.ndarray, y: np.ndarray, epochs: int) -> NumpyTrainer:
    trainer = NumpyTrainer(build_model(arch, seed))
    trainer.fit(x, y, TrainConfig(epochs=epochs, batch_size=32, lr=0.1, momentum=0.5, seed=seed))
    return trainer


def accuracy_run(sizes: list[int], seed: int, epochs: int, data: tuple,
                 save: Path | None) -> dict:
    x_train, y_train, x_test, y_test = data
    float_arch = {"kind": "mlp", "sizes": sizes}
    qat_arch = {**float_arch, "qat": True}
    float_model = train(float_arch, seed, x_train, y_train, epochs)
    qat_model = train(qat_arch, seed, x_train, y_train, epochs)
    ptq_arch, ptq_weights = calibrate(float_arch, float_model.get_weights(), x_train)
    ptq_model = NumpyTrainer(build_model(ptq_arch))
    ptq_model.set_weights(ptq_weights)
    if save is not None:
        for tag, arch, model in (("float", float_arch, float_model), ("qat", qat_arch, qat_model),
                                 ("ptq", ptq_arch, ptq_model)):
            np.savez(save / f"digits_{tag}.npz", **model.get_weights())
            (save / f"digits_{tag}.json").write_text(json.dumps(arch))
    scores = {tag: model.evaluate(x_test, y_test)["accuracy"]
              for tag, model in (("float", float_model), ("qat", qat_model), ("ptq", ptq_model))}
    return {"seed": seed, **{k: round(v, 4) for k, v in scores.items()},
            "qat_minus_float_points": round(100 * (scores["qat"] - scores["float"]), 2),
            "ptq_minus_float_points": round(100 * (scores["ptq"] - scores["float"]), 2)}


def epoch_times(sizes: list[int], x: np.ndarray, y: np.ndarray, epochs: int) -> dict:
    trainers = {tag: NumpyTrainer(build_model({"kind": "mlp", "sizes": sizes, "qat": qat}))
                for tag, qat in (("float", False), ("qat", True))}
    times: dict[str, list[float]] = {tag: [] for tag in trainers}
    for epoch in range(epochs):
        for tag, trainer in trainers.items():
            began = time.perf_counter()
            trainer.fit(x, y, TrainConfig(epochs=1, batch_size=32, lr=0.1, momentum=0.5,
                                        seed=epoch))
            times[tag].append(time.perf_counter() - began)
    medians = {tag: statistics.median(values) for tag, values in times.items()}
    return {"float_epoch_s_median": round(medians["float"], 4),
            "qat_epoch_s_median": round(medians["qat"], 4),
            "qat_to_float_ratio": round(medians["qat"] / medians["float"], 3),
            "epochs_timed": epochs, "train_samples": len(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1333)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-epochs", type=int, default=10)
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    x, y = load_digits()
    data = stratified_split(x, y, 0.2, SPLIT_SEED)
    sizes = [x.shape[1], args.hidden, 10]
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    runs = [accuracy_run(sizes, seed, args.epochs, data, args.save if seed == 0 else None)
            for seed in range(args.seeds)]
    print(json.dumps({
        "benchmark": "qat_training",
        "job": {"sizes": sizes, "epochs": args.epochs, "batch_size": 32, "lr": 0.1,
                "momentum": 0.5, "train": len(data[0]), "test": len(data[2]),
                "split_seed": SPLIT_SEED},
        "accuracy": runs,
        "worst_qat_minus_float_points": min(r["qat_minus_float_points"] for r in runs),
        "worst_ptq_minus_float_points": min(r["ptq_minus_float_points"] for r in runs),
        "qat_within_1_point": all(r["qat_minus_float_points"] >= -1.0 for r in runs),
        "speed": {**epoch_times(sizes, data[0], data[1], args.timing_epochs),
                  "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")},
    }, indent=2))


if __name__ == "__main__":
    main()
