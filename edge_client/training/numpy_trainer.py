"""The Trainer that fits a Sequential model; numpy + stdlib only so it runs on a Pi."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from edge_client.shared.portable_random import PortableRandom
from edge_client.shared.train_config import TrainConfig
from edge_client.shared.weights import Weights
from edge_client.training.arch import build_model, mlp
from edge_client.training.losses import softmax_cross_entropy
from edge_client.training.model import Sequential
from edge_client.training.optim import SGD
from edge_client.training.trainer import FitResult

_EVAL_CHUNK = 1024  # rows per evaluate forward pass; bounds memory on small devices
_EVAL_CHUNK_BYTES = 4 * 2**20  # and fewer rows when they are wide (memory-mapped data)
# And fewer rows when the model is wide: each float32 activation of a chunk under 256 KiB
# (the demo's 1333 units: 49 rows), so evaluating 232 samples before a fit holds 0.3 MB
# of activations, not 2.7 MB that glibc keeps in the process once freed.
_EVAL_ACTIVATION_BYTES = 256 * 2**10


class NumpyTrainer:
    """Trainer for a Sequential classifier: softmax cross-entropy, SGD, optional FedProx."""

    def __init__(self, model: Sequential) -> None:
        self.model = model

    def get_weights(self) -> Weights:
        return {name: p.copy() for name, p in self.model.params().items()}

    def set_weights(self, weights: Weights) -> None:
        self.model.load(weights)  # ValueError naming any name or shape that differs

    def adopt(self, arch: dict, weights: Weights) -> None:
        """Train a new architecture from now on (a new model line), with `weights`.
        ValueError (an unsupported layer, weights that do not fit it) keeps the old one."""
        candidate = NumpyTrainer(build_model(arch))
        candidate.set_weights(weights)
        self.model = candidate.model

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        config: TrainConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitResult:
        """Mini-batch SGD; shuffles each epoch from (config.seed, epoch) so runs repeat exactly.

        Batches are read by index and converted one at a time, so x may be memory-mapped
        (`np.load(path, mmap_mode="r")`) and larger than memory; the shuffled order holds
        8 bytes per sample (16 while it is drawn). The shuffle is PortableRandom's
        (edge_client/shared/portable_random.py), so training never loads numpy.random."""
        start = time.perf_counter()
        x, y = _as_dataset(x, y)
        optimizer = SGD(config.lr, config.momentum)
        anchor = self.get_weights() if config.prox_mu > 0 else None
        losses: list[float] = []
        stopped = False
        self.model.set_training(True)  # QAT: ActQuant layers track their ranges
        try:
            for epoch in range(config.epochs):
                order = PortableRandom(config.seed, epoch).permutation(len(x))
                for begin in range(0, len(x), config.batch_size):
                    if should_stop is not None and should_stop():
                        stopped = True
                        break
                    batch = order[begin : begin + config.batch_size]
                    xb, yb = _batch(x, y, batch)
                    losses.append(self._step(xb, yb, optimizer, anchor, config.prox_mu))
                if stopped:
                    break
        finally:
            self.model.set_training(False)
        return FitResult(
            num_samples=len(x),
            loss=float(np.mean(losses)) if losses else float("nan"),
            batches=len(losses),
            train_s=time.perf_counter() - start,
            stopped_early=stopped,
        )

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean loss and accuracy, in chunks so big test sets fit in memory.

        A QAT model is evaluated as its int8 export will run: fake-quantized, ranges frozen.
        """
        x, y = _as_dataset(x, y)
        self.model.set_training(False)
        loss_sum = 0.0
        correct = 0
        widest = max((p.shape[-1] for p in self.model.params().values() if p.ndim), default=1)
        chunk = max(1, min(_EVAL_CHUNK, _EVAL_CHUNK_BYTES // max(1, x[:1].nbytes),
                           _EVAL_ACTIVATION_BYTES // (4 * widest)))
        for begin in range(0, len(x), chunk):
            xb, yb = _batch(x, y, slice(begin, begin + chunk))
            logits = self.model.forward(xb)
            loss, _ = softmax_cross_entropy(logits, yb)
            loss_sum += loss * len(xb)
            correct += int((logits.argmax(axis=1) == yb).sum())
        return {"loss": loss_sum / len(x), "accuracy": correct / len(x)}

    def _step(
        self,
        x: np.ndarray,
        y: np.ndarray,
        optimizer: SGD,
        anchor: Weights | None,
        prox_mu: float,
    ) -> float:
        loss, dlogits = softmax_cross_entropy(self.model.forward(x), y)
        self.model.backward(dlogits)
        grads = self.model.grads()
        # Only trained parameters step; statistics (ActQuant ranges) have no gradient.
        params = {name: p for name, p in self.model.params().items() if name in grads}
        if anchor is not None:
            # Gradient of mu/2 * ||w - w_start||^2 is mu * (w - w_start).
            grads = {name: g + prox_mu * (params[name] - anchor[name]) for name, g in grads.items()}
        optimizer.step(params, grads)
        return loss


def mlp_trainer(sizes: Sequence[int], seed: int = 0, qat: bool = False) -> NumpyTrainer:
    """Shortcut for the common case: a fresh MLP wrapped in a NumpyTrainer."""
    return NumpyTrainer(mlp(sizes, seed, qat))


def _batch(x: np.ndarray, y: np.ndarray, rows: np.ndarray | slice) -> tuple[np.ndarray, ...]:
    """Rows of the data set as float32 features and int64 labels: only these are read."""
    return x[rows].astype(np.float32, copy=False), y[rows].astype(np.int64, copy=False)


def _as_dataset(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the data set, rejecting empty or mismatched data early. An array of real
    numbers is used as it is (a memory-mapped one is not loaded); batches are converted
    to float32 and int64 as they are read."""
    real = isinstance(x, np.ndarray) and x.dtype.kind in "biuf"
    x = x if real else np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim < 2:
        raise ValueError(
            f"x must be (samples, features) or (samples, length, channels), got shape {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be 1-D with {len(x)} labels, got shape {y.shape}")
    if len(x) == 0:
        raise ValueError("need at least one sample")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold int class indices, got dtype {y.dtype}")
    return x, y
