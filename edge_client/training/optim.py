"""Plain SGD with optional (PyTorch-style) momentum."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SGD:
    """v = momentum * v + grad; param -= lr * v. Velocity is kept per parameter name."""

    lr: float
    momentum: float = 0.0
    velocity: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update params in place, so the model's own arrays change."""
        for name, param in params.items():
            param -= self.lr * self._direction(name, grads[name])

    def _direction(self, name: str, grad: np.ndarray) -> np.ndarray:
        if self.momentum == 0:
            return grad
        velocity = self.velocity.get(name)
        if velocity is None:
            velocity = self.velocity[name] = np.zeros_like(grad)
        velocity *= self.momentum
        velocity += grad
        return velocity
