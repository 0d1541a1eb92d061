"""Int8 quantization math shared by quantization-aware training and the int8 export.

Training fake-quantizes with exactly these formulas, so a model exported to int8 computes
what it was trained to compute. Numpy only.

- Weights: per output channel (the last axis), symmetric, int8 in [-127, 127], zero point 0.
- Activations: per tensor, asymmetric, int8 in [-128, 127], the range widened to hold 0 so
  that 0 (ReLU's floor, padding) is exact.
- Bias: int32 with scale input_scale * weight_scale[c] and zero point 0.

Scales are rounded to float32, since that is how ONNX and TFLite store them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edge_client.shared.weights import Weights

WEIGHT_QMAX = 127
ACT_QMIN, ACT_QMAX = -128, 127
_WEIGHT_SCALE_FLOOR = 1e-8 / WEIGHT_QMAX  # a channel of tiny weights: no division by zero
# An all-zero channel is exact at any scale; scaling it as if max|w| were 1 keeps its bias
# (int32 at input_scale * weight_scale) representable instead of saturating int32.
_ZERO_CHANNEL_SCALE = 1.0 / WEIGHT_QMAX
_ACT_SCALE_FLOOR = 1e-8 / (ACT_QMAX - ACT_QMIN)
_CALIBRATION_CHUNK = 1024  # rows per forward pass while calibrating


def weight_scales(w: np.ndarray) -> np.ndarray:
    """One scale per output channel (last axis): max|w| over the other axes / 127."""
    w = np.asarray(w)
    if w.ndim < 1 or w.size == 0:
        raise ValueError(f"weights need a non-empty last (output channel) axis, got {w.shape}")
    dtype = np.float64 if w.dtype == np.float64 else np.float32
    magnitudes = np.abs(w.reshape(-1, w.shape[-1]))
    if magnitudes.shape[1] < 64:  # few channels (a logits layer): reduce contiguous rows
        max_abs = np.ascontiguousarray(magnitudes.T).max(axis=1).astype(dtype)
    else:
        max_abs = magnitudes.max(axis=0).astype(dtype)
    scales = np.maximum(max_abs / dtype(WEIGHT_QMAX), dtype(_WEIGHT_SCALE_FLOOR))
    scales[max_abs == 0] = dtype(_ZERO_CHANNEL_SCALE)
    return scales


def _weight_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(round(w / scale) clipped to [-127, 127] as floats, scales); in place for speed."""
    scales = weight_scales(w)
    q = np.divide(np.asarray(w, scales.dtype), scales)
    np.rint(q, out=q)
    np.clip(q, -WEIGHT_QMAX, WEIGHT_QMAX, out=q)
    return q, scales


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, per-channel scales): round(w / scale) clipped to [-127, 127]."""
    q, scales = _weight_codes(w)
    return q.astype(np.int8), scales


def dequantize_weight(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return q.astype(scales.dtype) * scales


def fake_quant_weight(w: np.ndarray) -> np.ndarray:
    """w snapped to its int8 grid, still as floats: what the int8 model will multiply by.

    Equal to dequantize_weight(*quantize_weight(w)), without the int8 round trip.
    """
    q, scales = _weight_codes(w)
    q *= scales
    return q


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero_point) of a per-tensor int8 activation observed in [lo, hi]."""
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range must be finite, got [{lo}, {hi}]")
    if lo > hi:
        raise ValueError(f"activation range must have min <= max, got [{lo}, {hi}]")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32(max((hi - lo) / (ACT_QMAX - ACT_QMIN), _ACT_SCALE_FLOOR)))
    zero_point = min(max(round(ACT_QMIN - lo / scale), ACT_QMIN), ACT_QMAX)
    return scale, zero_point


def _act_codes(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """round(x / scale) + zero_point, not yet saturated, as floats in a new array."""
    q = np.divide(x, scale)
    np.rint(q, out=q)
    q += zero_point
    return q


def quantize_act(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 codes: round(x / scale) + zero_point, saturated (ONNX QuantizeLinear's formula)."""
    q = _act_codes(x, scale, zero_point)
    return np.clip(q, ACT_QMIN, ACT_QMAX, out=q).astype(np.int8)


def dequantize_act(q: np.ndarray, scale: float, zero_point: int,
                   dtype: np.dtype | type = np.float32) -> np.ndarray:
    return (q.astype(dtype) - zero_point) * np.asarray(scale, dtype)


def fake_quant_act(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x snapped to the int8 grid of the range [lo, hi], in x's float dtype."""
    return fake_quant_act_ste(x, lo, hi)[0]


def fake_quant_act_ste(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """fake_quant_act(x, lo, hi) and where it did not saturate: where the STE lets gradients by.

    Equal to dequantize_act(quantize_act(...)): clipping round(x / scale) to
    [-128 - zp, 127 - zp] is clipping the codes to [-128, 127] with the zero point taken
    back out, since both are exact small integers in float. Fewer passes over x, as this
    runs on every activation of every training batch.
    """
    scale, zero_point = act_qparams(lo, hi)
    steps = np.divide(x, scale)
    np.rint(steps, out=steps)
    snapped = np.clip(steps, ACT_QMIN - zero_point, ACT_QMAX - zero_point)
    inside = snapped == steps
    snapped *= scale
    return snapped, inside


def quantize_bias(bias: np.ndarray, input_scale: float, scales: np.ndarray) -> np.ndarray:
    """int32 bias for an int8 layer: round(b / (input_scale * weight_scale[c]))."""
    bias_scale = np.float32(input_scale) * np.asarray(scales, np.float32)
    q = np.rint(np.asarray(bias, np.float64) / bias_scale.astype(np.float64))
    info = np.iinfo(np.int32)
    return np.clip(q, info.min, info.max).astype(np.int32)


def calibrate(arch: dict, weights: Weights, x_calib: np.ndarray) -> tuple[dict, Weights]:
    """Post-training quantization of a float model from a calibration set.

    Builds the QAT version of `arch`, copies the float weights in, and sets every
    `{aq}.range` to the min and max its input takes over `x_calib` (weights fake-quantized,
    activations not, as the float model would see them). Returns the QAT arch and weights.
    """
    # Imported here: the model builder imports the layers, which import this module.
    from edge_client.training.arch import build_model
    from edge_client.training.layers import ActQuant
    from edge_client.training.weights import check_weights_match

    if arch.get("qat"):
        raise ValueError("calibrate takes a float model; this arch already has qat = true")
    qat_arch = {**arch, "qat": True}
    model = build_model(qat_arch)
    params = model.params()
    ranges = {name for name in params if name.endswith(".range")}
    check_weights_match({k: v for k, v in params.items() if k not in ranges}, weights)
    for name, param in params.items():
        if name not in ranges:
            param[...] = weights[name]
    x_calib = np.asarray(x_calib, np.float32)
    if len(x_calib) == 0:
        raise ValueError("calibration needs at least one sample")
    bad = int(np.size(x_calib) - np.count_nonzero(np.isfinite(x_calib)))
    if bad:  # min/max would make the ranges NaN or infinite
        raise ValueError(f"calibration inputs must be finite; {bad} values are NaN or inf")
    seen: dict[str, list[float]] = {}
    for begin in range(0, len(x_calib), _CALIBRATION_CHUNK):
        x = x_calib[begin:begin + _CALIBRATION_CHUNK]
        for layer in model.layers:
            if isinstance(layer, ActQuant):
                lo, hi = seen.get(layer.name, [np.inf, -np.inf])
                seen[layer.name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
            else:
                x = layer.forward(x)
    for layer in model.layers:
        if isinstance(layer, ActQuant):
            layer.range[...] = seen[layer.name]
    return qat_arch, {name: p.copy() for name, p in model.params().items()}
