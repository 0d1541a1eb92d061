"""A canary device's evaluation: the candidate against production on the device's own
held-out data (docs/lifecycle.md). Only counts and averages leave the device."""

from __future__ import annotations

import time

import numpy as np

from edge_client.export.runtimes import load_model
from edge_client.session.held_model import HeldModel, copy_weights
from edge_client.shared.protocol.rollout import CanaryReport
from edge_client.training.trainer import Trainer

RUNNABLE = ("mlp", "sequential")  # arch kinds the numpy runtime builds (training/arch.py)


def canary_report(device_id: str, candidate: HeldModel, production: HeldModel,
                  x: np.ndarray, y: np.ndarray) -> CanaryReport:
    """Accuracy and mean cross-entropy of both models, and the share of examples where
    they predict the same class, in the numpy runtime (edge_client.export). ValueError if
    there is nothing to evaluate on or the arch is not a model it can build."""
    if len(x) == 0:
        raise ValueError("no held-out examples to evaluate on")
    cand = _probabilities(candidate, x)
    prod = _probabilities(production, x)
    labels = np.asarray(y).astype(np.int64).reshape(-1)
    cand_pred, prod_pred = cand.argmax(axis=1), prod.argmax(axis=1)
    return CanaryReport(
        device_id=device_id, candidate=candidate.version, production=production.version,
        samples=len(labels), candidate_accuracy=float(np.mean(cand_pred == labels)),
        production_accuracy=float(np.mean(prod_pred == labels)),
        candidate_loss=_cross_entropy(cand, labels), production_loss=_cross_entropy(prod, labels),
        agreement=float(np.mean(cand_pred == prod_pred)), time=time.time())


def trainer_report(device_id: str, trainer: Trainer, candidate: HeldModel,
                   production: HeldModel, x: np.ndarray, y: np.ndarray) -> CanaryReport:
    """The same comparison through the app's own trainer, for a model the numpy runtime
    cannot run (a custom trainer with no `arch`): accuracy and, if its evaluate gives it,
    loss; no agreement (a Trainer does not predict). The trainer's weights are put back."""
    if len(x) == 0:
        raise ValueError("no held-out examples to evaluate on")
    before = trainer.get_weights()
    try:
        trainer.set_weights(copy_weights(candidate.tensors))
        cand = trainer.evaluate(x, y)
        trainer.set_weights(copy_weights(production.tensors))
        prod = trainer.evaluate(x, y)
    finally:
        trainer.set_weights(before)
    if "accuracy" not in cand or "accuracy" not in prod:
        raise ValueError("the trainer's evaluate() gives no accuracy")
    return CanaryReport(
        device_id=device_id, candidate=candidate.version, production=production.version,
        samples=len(x), candidate_accuracy=float(cand["accuracy"]),
        production_accuracy=float(prod["accuracy"]), candidate_loss=_loss(cand),
        production_loss=_loss(prod), agreement=None, time=time.time())


def _loss(figures: dict[str, float]) -> float | None:
    loss = figures.get("loss")
    return float(loss) if loss is not None and np.isfinite(loss) and loss >= 0 else None


def _probabilities(model: HeldModel, x: np.ndarray) -> np.ndarray:
    logits = load_model("numpy", model.arch, model.tensors).logits(x).astype(np.float64)
    logits = np.nan_to_num(logits, nan=0.0, posinf=1e30, neginf=-1e30)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(picked, 1e-12, 1.0))))

