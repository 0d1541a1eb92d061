"""A worked example of plugging your own model into fedge: softmax regression.

fedge only needs the four methods of `edge_client.training.Trainer`. Weights travel
as a flat dict of named float32 arrays; the aggregator averages them by name, so any
model whose state fits that shape can federate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edge_client.training import FitResult, TrainConfig


class SoftmaxRegressionTrainer:
    """A linear classifier trained with plain mini-batch SGD."""

    def __init__(self, features: int, classes: int) -> None:
        self.w = np.zeros((features, classes), np.float32)
        self.b = np.zeros(classes, np.float32)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {"linear.weight": self.w.copy(), "linear.bias": self.b.copy()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        if weights.keys() != {"linear.weight", "linear.bias"}:
            raise ValueError(f"unexpected weights {sorted(weights)}")
        if weights["linear.weight"].shape != self.w.shape:
            raise ValueError("linear.weight has the wrong shape")
        self.w = weights["linear.weight"].astype(np.float32)
        self.b = weights["linear.bias"].astype(np.float32)

    def _probs(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.w + self.b
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def fit(self, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        start, rng = time.perf_counter(), np.random.default_rng(config.seed)
        losses, batches, stopped = [], 0, False
        for _ in range(config.epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x), config.batch_size):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                idx = order[i:i + config.batch_size]
                p = self._probs(x[idx])
                losses.append(float(-np.log(p[np.arange(len(idx)), y[idx]] + 1e-12).mean()))
                p[np.arange(len(idx)), y[idx]] -= 1.0
                self.w -= config.lr * (x[idx].T @ p / len(idx)).astype(np.float32)
                self.b -= config.lr * p.mean(axis=0).astype(np.float32)
                batches += 1
            if stopped:
                break
        return FitResult(num_samples=len(x), loss=float(np.mean(losses)) if losses else
                         float("nan"), batches=batches, train_s=time.perf_counter() - start,
                         stopped_early=stopped)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        p = self._probs(x)
        return {"loss": float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()),
                "accuracy": float((p.argmax(axis=1) == y).mean())}
