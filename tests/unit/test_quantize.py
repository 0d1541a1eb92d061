"""Int8 quantization math (edge_client/training/quantize.py) and post-training calibration."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.training import (
    ActQuant,
    Conv1D,
    Dense,
    act_qparams,
    build_model,
    calibrate,
    dequantize_act,
    dequantize_weight,
    fake_quant_act,
    fake_quant_weight,
    mlp,
    quantize_act,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from edge_client.training.quantize import fake_quant_act_ste


def test_weight_scales_are_max_abs_per_output_channel_over_127():
    w = np.array([[1.0, -2.0, 0.5], [-0.5, 4.0, -0.25]], dtype=np.float32)  # (in, out)
    np.testing.assert_allclose(weight_scales(w), [1 / 127, 4 / 127, 0.5 / 127], rtol=1e-7)
    conv = np.zeros((3, 2, 2), dtype=np.float32)  # (kernel, in, out): channel = last axis
    conv[2, 1, 0], conv[0, 0, 1] = -6.35, 1.27
    np.testing.assert_allclose(weight_scales(conv), [0.05, 0.01], rtol=1e-6)
    assert weight_scales(w).dtype == np.float32


def test_quantized_weights_fill_the_symmetric_int8_range():
    w = (np.random.default_rng(0).standard_normal((30, 5)) * [1, 10, 0.1, 3, 7]).astype(np.float32)
    q, scales = quantize_weight(w)
    assert scales.dtype == np.float32 and q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    np.testing.assert_array_equal(np.abs(q).max(axis=0), [127] * 5)  # every channel's max


def test_weight_round_trip_error_is_at_most_half_a_step():
    w = np.random.default_rng(1).standard_normal((3, 4, 6)).astype(np.float32)
    q, scales = quantize_weight(w)
    error = np.abs(dequantize_weight(q, scales) - w)
    assert np.all(error <= scales / 2 * (1 + 1e-5))


def test_an_all_zero_channel_stays_zero_at_a_scale_its_bias_fits():
    """Zero is exact at any scale; a tiny one would push the channel's int32 bias
    (at input_scale * weight_scale) past int32, and the int8 model would lose it."""
    w = np.array([[0.0, 1.0], [0.0, -2.0]], dtype=np.float32)
    q, scales = quantize_weight(w)
    assert scales[0] == np.float32(1 / 127) and scales[1] == np.float32(2 / 127)
    np.testing.assert_array_equal(q[:, 0], [0, 0])
    np.testing.assert_array_equal(fake_quant_weight(w)[:, 0], [0.0, 0.0])
    bias_q = quantize_bias(np.array([0.8, 0.8]), 0.02, scales)
    np.testing.assert_allclose(bias_q * 0.02 * scales, [0.8, 0.8], rtol=1e-3)


def test_a_tiny_nonzero_channel_still_gets_a_positive_scale():
    w = np.array([[1e-12, 1.0], [0.0, -2.0]], dtype=np.float32)
    q, scales = quantize_weight(w)
    assert 0 < scales[0] < 1e-9 and np.isfinite(scales).all()
    np.testing.assert_array_equal(q[:, 0], [0, 0])


def test_fake_quant_weight_equals_quantize_then_dequantize():
    w = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    fq = fake_quant_weight(w)
    assert fq.dtype == np.float32
    np.testing.assert_array_equal(fq, dequantize_weight(*quantize_weight(w)))
    assert len(np.unique(fq[:, 0])) <= 255


@pytest.mark.parametrize("lo, hi, zero_point", [
    (-1.0, 1.55, -28),   # scale 0.01: round(-128 + 1.0 / 0.01)
    (0.0, 2.55, -128),   # ReLU output: 0 is the lowest code
    (2.0, 5.0, -128),    # widened to [0, 5]
    (-5.0, -2.0, 127),   # widened to [-5, 0]
    (-0.51, 2.04, -77),  # round(-128 + 0.51 / 0.01)
])
def test_act_qparams_by_hand(lo, hi, zero_point):
    scale, zp = act_qparams(lo, hi)
    assert scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)
    assert scale == float(np.float32(scale))  # exactly what a float32 model file stores
    assert zp == zero_point and isinstance(zp, int)


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 6.0), (0.3, 0.7), (-4.2, -0.1),
                                    (-0.017, 13.9), (-1e-3, 1e-3)])
def test_zero_is_exact_in_every_activation_range(lo, hi):
    scale, zp = act_qparams(lo, hi)
    assert dequantize_act(quantize_act(np.zeros(1, np.float32), scale, zp), scale, zp)[0] == 0
    assert -128 <= zp <= 127


def test_activation_codes_saturate_and_round_trip_within_half_a_step():
    lo, hi = -0.73, 2.9
    scale, zp = act_qparams(lo, hi)
    x = np.linspace(lo, hi, 1001, dtype=np.float32)
    q = quantize_act(x, scale, zp)
    assert q.dtype == np.int8
    error = np.abs(dequantize_act(q, scale, zp) - x)
    assert error.max() <= scale / 2 * (1 + 1e-4)
    extremes = quantize_act(np.array([-100.0, 100.0], np.float32), scale, zp)
    np.testing.assert_array_equal(extremes, [-128, 127])


def test_the_ste_mask_is_true_inside_the_range_and_false_where_codes_saturate():
    lo, hi = -1.0, 3.0
    x = np.linspace(-3, 5, 801, dtype=np.float32)
    out, inside = fake_quant_act_ste(x, lo, hi)
    np.testing.assert_array_equal(out, fake_quant_act(x, lo, hi))
    assert inside[(x >= lo) & (x <= hi)].all()
    assert not inside[(x < lo - 0.05) | (x > hi + 0.05)].any()  # a half step is 4 / 255 / 2


def test_fake_quant_act_equals_quantize_then_dequantize():
    x = np.random.default_rng(3).standard_normal((50, 7)).astype(np.float32) * 3
    scale, zp = act_qparams(-2.0, 4.0)
    fq = fake_quant_act(x, -2.0, 4.0)
    assert fq.dtype == np.float32
    np.testing.assert_array_equal(fq, dequantize_act(quantize_act(x, scale, zp), scale, zp))


def test_an_empty_range_gets_a_floor_scale_not_a_division_by_zero():
    scale, zp = act_qparams(0.0, 0.0)
    assert 0 < scale < 1e-9 and zp == -128
    assert np.isfinite(fake_quant_act(np.array([0.0, 1.0], np.float32), 0.0, 0.0)).all()


@pytest.mark.parametrize("lo, hi, message", [(1.0, -1.0, "min <= max"),
                                             (float("nan"), 1.0, "finite"),
                                             (0.0, float("inf"), "finite")])
def test_act_qparams_rejects_bad_ranges(lo, hi, message):
    with pytest.raises(ValueError, match=message):
        act_qparams(lo, hi)


def test_weight_scales_reject_empty_weights():
    with pytest.raises(ValueError, match="empty"):
        weight_scales(np.zeros((3, 0), np.float32))


def test_bias_is_int32_at_input_scale_times_weight_scale():
    q = quantize_bias(np.array([0.5, -0.25, 0.0]), 0.01, np.array([0.1, 0.05, 0.2], np.float32))
    assert q.dtype == np.int32
    np.testing.assert_array_equal(q, [500, -500, 0])


def _float_mlp_and_data():
    model = mlp([6, 8, 3], seed=0)
    x = np.random.default_rng(1).standard_normal((1500, 6)).astype(np.float32)
    return model, x


def test_calibrate_sets_each_range_to_what_the_calibration_set_shows():
    model, x = _float_mlp_and_data()
    weights = {name: p.copy() for name, p in model.params().items()}
    qat_arch, calibrated = calibrate({"kind": "mlp", "sizes": [6, 8, 3]}, weights, x)
    assert qat_arch == {"kind": "mlp", "sizes": [6, 8, 3], "qat": True}
    assert list(calibrated) == ["aq0.range", "dense0.weight", "dense0.bias", "aq1.range",
                                "dense1.weight", "dense1.bias", "aq2.range"]
    for name, array in weights.items():
        np.testing.assert_array_equal(calibrated[name], array)
    # By hand: the float path with int8 weights, as the int8 model multiplies.
    hidden = np.maximum(x @ fake_quant_weight(weights["dense0.weight"]) + weights["dense0.bias"],
                        0)
    logits = hidden @ fake_quant_weight(weights["dense1.weight"]) + weights["dense1.bias"]
    for name, seen in (("aq0", x), ("aq1", hidden), ("aq2", logits)):
        np.testing.assert_allclose(calibrated[f"{name}.range"], [seen.min(), seen.max()],
                                   rtol=1e-5, err_msg=name)


def test_calibrated_weights_load_into_the_qat_model():
    model, x = _float_mlp_and_data()
    qat_arch, calibrated = calibrate({"kind": "mlp", "sizes": [6, 8, 3]}, model.params(), x)
    qat_model = build_model(qat_arch)
    for name, param in qat_model.params().items():
        param[...] = calibrated[name]
    aqs = [layer for layer in qat_model.layers if isinstance(layer, ActQuant)]
    assert all(aq.observed() for aq in aqs)
    assert all(layer.qat for layer in qat_model.layers if isinstance(layer, Dense | Conv1D))
    logits = qat_model.forward(x[:200])
    scale, zp = aqs[-1].qparams()
    codes = logits / scale + zp  # eval output lies on the last ActQuant's int8 grid
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)


def test_calibrate_a_1d_cnn():
    arch = {"kind": "sequential", "input_shape": [16, 2], "layers": [
        {"type": "conv1d", "filters": 4, "kernel": 3}, {"type": "relu"},
        {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}]}
    weights = build_model(arch, seed=0).params()
    x = np.random.default_rng(0).standard_normal((40, 16, 2)).astype(np.float32)
    _, calibrated = calibrate(arch, weights, x)
    assert sorted(k for k in calibrated if k.endswith(".range")) == ["aq0.range", "aq1.range",
                                                                     "aq2.range"]
    np.testing.assert_allclose(calibrated["aq0.range"], [x.min(), x.max()])
    assert calibrated["aq1.range"][0] == 0 and calibrated["aq1.range"][1] > 0  # after ReLU


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibrate_refuses_non_finite_inputs(bad):
    model, x = _float_mlp_and_data()
    x = x.copy()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="calibration inputs must be finite; 1 values"):
        calibrate({"kind": "mlp", "sizes": [6, 8, 3]}, model.params(), x)


def test_calibrate_refuses_a_qat_arch_and_mismatched_weights():
    model, x = _float_mlp_and_data()
    with pytest.raises(ValueError, match="already has qat"):
        calibrate({"kind": "mlp", "sizes": [6, 8, 3], "qat": True}, model.params(), x)
    with pytest.raises(ValueError, match="missing"):
        calibrate({"kind": "mlp", "sizes": [6, 8, 3]}, {}, x)
    with pytest.raises(ValueError, match="at least one sample"):
        calibrate({"kind": "mlp", "sizes": [6, 8, 3]}, model.params(), x[:0])
