"""Layers with forward next to backward. Each caches what its backward pass needs."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_client.training.quantize import act_qparams, fake_quant_act_ste, fake_quant_weight


class Layer(Protocol):
    """What Sequential needs from a layer."""

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def backward(self, grad: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, np.ndarray]: ...

    def grads(self) -> dict[str, np.ndarray]: ...


class Dense:
    """y = x @ weight + bias, weight shaped (in_features, out_features) like a Keras kernel.

    With qat=True the forward pass multiplies by the weight snapped to its per-channel int8
    grid, and the gradient goes straight through to the float weight (the STE).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        name: str,
        rng: np.random.Generator | None,
        qat: bool = False,
    ) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"{name}: sizes must be >= 1, got {in_features}x{out_features}")
        self.name = name
        self.in_features = in_features
        self.out_features = out_features
        self.qat = qat
        self.weight = np.zeros((in_features, out_features), dtype=np.float32)
        if rng is not None:
            self.draw_weights(rng)
        self.bias = np.zeros(out_features, dtype=np.float32)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._x: np.ndarray | None = None
        self._used_weight: np.ndarray | None = None

    def draw_weights(self, rng: np.random.Generator) -> None:
        """He init (keeps activation variance steady through ReLUs); with rng None the
        constructor leaves zeros for the model to draw into later (model.py)."""
        std = np.sqrt(2.0 / self.in_features)
        self.weight[...] = (rng.standard_normal(self.weight.shape) * std).astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected (n, {self.in_features}) input, got {x.shape}")
        self._x = x
        self._used_weight = fake_quant_weight(self.weight) if self.qat else self.weight
        return x @ self._used_weight + self.bias

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._x is None or self._used_weight is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        self.grad_weight = self._x.T @ grad
        self.grad_bias = grad.sum(axis=0)
        return grad @ self._used_weight.T

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


class Conv1D:
    """1-D convolution, padding "valid", over (n, length, channels) windows (NWC).

    weight is (kernel, in_channels, out_channels). Forward is im2col: every output position
    becomes one row of kernel*in_channels inputs, and one matmul does all of them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        name: str,
        rng: np.random.Generator | None,
        stride: int = 1,
        qat: bool = False,
    ) -> None:
        if min(in_channels, out_channels, kernel, stride) < 1:
            raise ValueError(
                f"{name}: channels, kernel and stride must be >= 1, got in_channels="
                f"{in_channels}, out_channels={out_channels}, kernel={kernel}, stride={stride}"
            )
        self.name = name
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel = kernel
        self.stride = stride
        self.qat = qat
        self.weight = np.zeros((kernel, in_channels, out_channels), dtype=np.float32)
        if rng is not None:
            self.draw_weights(rng)
        self.bias = np.zeros(out_channels, dtype=np.float32)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._cols: np.ndarray | None = None
        self._x_shape: tuple[int, ...] = ()
        self._used_weight: np.ndarray | None = None

    def draw_weights(self, rng: np.random.Generator) -> None:
        """He init over the kernel's fan-in; rng None in the constructor: as Dense."""
        std = np.sqrt(2.0 / (self.kernel * self.in_channels))
        self.weight[...] = (rng.standard_normal(self.weight.shape) * std).astype(np.float32)

    def output_length(self, length: int) -> int:
        return (length - self.kernel) // self.stride + 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 3 or x.shape[2] != self.in_channels or x.shape[1] < self.kernel:
            raise ValueError(
                f"{self.name}: expected (n, length >= {self.kernel}, {self.in_channels}) "
                f"input, got {x.shape}"
            )
        n, length, _ = x.shape
        out_len = self.output_length(length)
        # (n, positions, in_channels, kernel) view -> rows ordered (kernel, in_channels)
        windows = sliding_window_view(x, self.kernel, axis=1)[:, :: self.stride][:, :out_len]
        cols = windows.transpose(0, 1, 3, 2).reshape(n * out_len, -1)
        self._cols, self._x_shape = cols, x.shape
        self._used_weight = fake_quant_weight(self.weight) if self.qat else self.weight
        out = cols @ self._used_weight.reshape(-1, self.out_channels) + self.bias
        return out.reshape(n, out_len, self.out_channels)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._cols is None or self._used_weight is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        n = self._x_shape[0]
        out_len = grad.shape[1]
        rows = grad.reshape(n * out_len, self.out_channels)
        self.grad_weight = (self._cols.T @ rows).reshape(self.weight.shape)
        self.grad_bias = rows.sum(axis=0)
        dcols = rows @ self._used_weight.reshape(-1, self.out_channels).T
        dcols = dcols.reshape(n, out_len, self.kernel, self.in_channels)
        dx = np.zeros(self._x_shape, dtype=dcols.dtype)
        span = self.stride * (out_len - 1) + 1
        for tap in range(self.kernel):  # col2im: a loop over kernel taps, not samples
            dx[:, tap : tap + span : self.stride] += dcols[:, :, tap]
        return dx

    def params(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.weight": self.weight, f"{self.name}.bias": self.bias}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.weight": self.grad_weight, f"{self.name}.bias": self.grad_bias}


class MaxPool1D:
    """Max over non-overlapping windows of `size` along the length (stride = size, floor)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"MaxPool1D: size must be >= 1, got {size}")
        self.size = size
        self._argmax: np.ndarray | None = None
        self._x_shape: tuple[int, ...] = ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 3 or x.shape[1] < self.size:
            raise ValueError(f"MaxPool1D: expected (n, length >= {self.size}, c), got {x.shape}")
        n, length, channels = x.shape
        out_len = length // self.size
        windows = x[:, : out_len * self.size].reshape(n, out_len, self.size, channels)
        self._argmax = windows.argmax(axis=2)[:, :, None, :]
        self._x_shape = x.shape
        return np.take_along_axis(windows, self._argmax, axis=2)[:, :, 0, :]

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._argmax is None:
            raise RuntimeError("MaxPool1D: backward called before forward")
        n, _, channels = self._x_shape
        out_len = grad.shape[1]
        dwindows = np.zeros((n, out_len, self.size, channels), dtype=grad.dtype)
        np.put_along_axis(dwindows, self._argmax, grad[:, :, None, :], axis=2)
        dx = np.zeros(self._x_shape, dtype=grad.dtype)
        dx[:, : out_len * self.size] = dwindows.reshape(n, out_len * self.size, channels)
        return dx  # the floor-dropped tail and the non-max entries get no gradient

    def params(self) -> dict[str, np.ndarray]:
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        return {}


class Flatten:
    """(n, length, channels) -> (n, length * channels), row-major like numpy and TFLite."""

    def __init__(self) -> None:
        self._x_shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected (n, ...) input, got {x.shape}")
        self._x_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._x_shape is None:
            raise RuntimeError("Flatten: backward called before forward")
        return grad.reshape(self._x_shape)

    def params(self) -> dict[str, np.ndarray]:
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        return {}


class ActQuant:
    """Fake-quantizes activations to per-tensor asymmetric int8, as the int8 model will.

    `range` ([min, max], float32) is a statistic, not a trained weight: training tracks it
    by exponential moving average (the first batch sets it) and eval uses it frozen. It
    lives in the weights anyway, so FedAvg averages the devices' ranges and the model file
    carries them to the int8 export. The optimizer never touches it (`grads()` leaves it
    out). A range of [0, 0] means nothing was observed yet: eval passes values through.
    So does a range no batch could give (NaN, inf, min > max), which DP noise or a
    server optimizer can make of an averaged range: the next training batch sets it afresh.
    Backward is the straight-through estimator: gradient inside the int8 grid, zero where
    the forward pass saturated.
    """

    def __init__(self, name: str, momentum: float = 0.99) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
        self.name = name
        self.momentum = momentum
        self.range = np.zeros(2, dtype=np.float32)
        self.training = False
        self._mask: np.ndarray | None = None

    def observed(self) -> bool:
        """True when the range is usable: seen data (not [0, 0]), finite, min <= max."""
        lo, hi = float(self.range[0]), float(self.range[1])
        return bool(np.isfinite(lo) and np.isfinite(hi) and lo <= hi and (lo or hi))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.training:
            self._track(x)
        if not self.observed():
            self._mask = None
            return x
        out, self._mask = fake_quant_act_ste(x, float(self.range[0]), float(self.range[1]))
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray:
        return grad if self._mask is None else grad * self._mask

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) of this tensor in the int8 model."""
        return act_qparams(float(self.range[0]), float(self.range[1]))

    def params(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.range": self.range}

    def grads(self) -> dict[str, np.ndarray]:
        return {}

    def _track(self, x: np.ndarray) -> None:
        batch = np.array([x.min(), x.max()], dtype=np.float32)
        if not np.all(np.isfinite(batch)):
            return  # a diverged batch must not poison the range; the loss shows the problem
        if self.observed():
            self.range *= self.momentum
            self.range += (1 - self.momentum) * batch
        else:
            self.range[...] = batch
