"""Layers with forward next to backward. Each caches what its backward pass needs."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Layer(Protocol):
    """What Sequential needs from a layer."""

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def backward(self, grad: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, np.ndarray]: ...

    def grads(self) -> dict[str, np.ndarray]: ...


class Dense:
    """y = x @ weight + bias, weight shaped (in_features, out_features) like a Keras kernel."""

    def __init__(
        self, in_features: int, out_features: int, name: str, rng: np.random.Generator
    ) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"{name}: sizes must be >= 1, got {in_features}x{out_features}")
        self.name = name
        self.in_features = in_features
        self.out_features = out_features
        # He init keeps activation variance steady through ReLUs.
        std = np.sqrt(2.0 / in_features)
        self.weight = (rng.standard_normal((in_features, out_features)) * std).astype(np.float32)
        self.bias = np.zeros(out_features, dtype=np.float32)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected (n, {self.in_features}) input, got {x.shape}")
        self._x = x
        return x @ self.weight + self.bias

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        self.grad_weight = self._x.T @ grad
        self.grad_bias = grad.sum(axis=0)
        return grad @ self.weight.T

    def params(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.weight": self.weight, f"{self.name}.bias": self.bias}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.weight": self.grad_weight, f"{self.name}.bias": self.grad_bias}


class ReLU:
    """max(0, x); the gradient passes only where the input was positive."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("ReLU: backward called before forward")
        return grad * self._mask

    def params(self) -> dict[str, np.ndarray]:
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        return {}
