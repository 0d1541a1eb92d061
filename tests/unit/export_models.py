"""Trained models and data for the export and predictor tests, built once per session.

The digits MLP is the demo's model (64-1333-10); the 1D-CNN is the contract's example
arch on synthetic 3-axis vibration windows whose class is the dominant frequency.
"""

from __future__ import annotations

import copy
from functools import cache

import numpy as np

from edge_client.shared.weights import Weights
from edge_client.training import NumpyTrainer, TrainConfig, build_model, calibrate
from fedge.datasets import load_digits, stratified_split

MLP = {"kind": "mlp", "sizes": [64, 1333, 10]}
CNN = {"kind": "sequential", "input_shape": [128, 3], "layers": [
    {"type": "conv1d", "filters": 8, "kernel": 5, "stride": 1}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 32}, {"type": "relu"}, {"type": "dense", "units": 4}]}


def qat(arch: dict) -> dict:
    return {**copy.deepcopy(arch), "qat": True}


@cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's split: 20% stratified test set, seed 42."""
    return stratified_split(*load_digits(), test_fraction=0.2, seed=42)


@cache
def vibration(n: int = 480, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Windows (n, 128, 3): class c vibrates at frequency 2 + 3c with phase, gain and noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(128) / 128
    freq = (2 + 3 * y)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 3))
    gain = rng.uniform(0.5, 1.5, (n, 1, 3))
    x = gain * np.sin(2 * np.pi * freq * t[None, :, None] + phase)
    x = (x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    split = n * 3 // 4
    return x[:split], y[:split], x[split:], y[split:]


def data_for(arch: dict) -> tuple[np.ndarray, ...]:
    return digits() if arch["kind"] == "mlp" else vibration()


@cache
def _trained(key: str) -> tuple[dict, Weights]:
    """Models keyed by name: mlp, mlp-qat, cnn, cnn-qat."""
    arch = {"mlp": MLP, "cnn": CNN}[key.split("-")[0]]
    if key.endswith("-qat"):
        arch = qat(arch)
    x, y, _, _ = data_for(arch)
    trainer = NumpyTrainer(build_model(arch, seed=0))
    epochs = 8 if arch["kind"] == "mlp" else 6
    trainer.fit(x, y, TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.5))
    return arch, trainer.get_weights()


def trained(key: str) -> tuple[dict, Weights]:
    """A copy, so a test may change the arrays it gets."""
    arch, weights = _trained(key)
    return copy.deepcopy(arch), {k: v.copy() for k, v in weights.items()}


def calibrated(key: str) -> tuple[dict, Weights]:
    """The float model `key` quantized after training, on its first 200 training rows."""
    arch, weights = trained(key)
    return calibrate(arch, weights, data_for(arch)[0][:200])
