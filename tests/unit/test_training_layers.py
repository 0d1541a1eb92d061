"""Layers against finite differences (float64) and against plain-loop references; QAT's STE."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge_client.training import (
    ActQuant,
    Conv1D,
    Dense,
    Flatten,
    MaxPool1D,
    NumpyTrainer,
    ReLU,
    TrainConfig,
    build_model,
    fake_quant_act,
    fake_quant_weight,
    softmax_cross_entropy,
)

EPS = 1e-6


def _numeric_grad(f: Callable[[], float], array: np.ndarray) -> np.ndarray:
    """Central differences of f with respect to every entry of `array` (changed in place)."""
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        saved = array[i]
        array[i] = saved + EPS
        plus = f()
        array[i] = saved - EPS
        minus = f()
        array[i] = saved
        grad[i] = (plus - minus) / (2 * EPS)
    return grad


def _to_float64(layer) -> None:
    """Finite differences in float32 are mostly noise; biases get off zero to matter."""
    if isinstance(layer, Dense | Conv1D):
        layer.weight = layer.weight.astype(np.float64)
        layer.bias = layer.bias.astype(np.float64) + np.linspace(-0.2, 0.2, layer.bias.size)


def _check_layer_gradients(layer, x: np.ndarray, seed: int = 0) -> None:
    """Loss = sum(layer(x) * r) for a fixed random r, so d(loss)/d(out) = r."""
    r = np.random.default_rng(seed).standard_normal(layer.forward(x).shape)

    def loss() -> float:
        return float((layer.forward(x) * r).sum())

    layer.forward(x)
    dx = layer.backward(r)
    analytic = {name: g.copy() for name, g in layer.grads().items()}
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-8, err_msg="dx")
    for name, param in layer.params().items():
        np.testing.assert_allclose(analytic[name], _numeric_grad(loss, param), rtol=1e-6,
                                   atol=1e-8, err_msg=name)


def _conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """The textbook loop: out[n, t, o] = sum_k,c x[n, t*stride + k, c] * w[k, c, o] + b[o]."""
    n, length, _ = x.shape
    kernel, _, out_channels = w.shape
    out_len = (length - kernel) // stride + 1
    out = np.zeros((n, out_len, out_channels))
    for i in range(n):
        for t in range(out_len):
            window = x[i, t * stride : t * stride + kernel]  # (kernel, in_channels)
            out[i, t] = np.tensordot(window, w, axes=([0, 1], [0, 1])) + b
    return out


def test_dense_gradients():
    layer = Dense(4, 3, "d", np.random.default_rng(0))
    _to_float64(layer)
    _check_layer_gradients(layer, np.random.default_rng(1).standard_normal((5, 4)))


@pytest.mark.parametrize("stride, length", [(1, 9), (2, 9), (2, 10), (3, 11)])
def test_conv1d_gradients(stride, length):
    layer = Conv1D(2, 3, 3, "c", np.random.default_rng(0), stride=stride)
    _to_float64(layer)
    _check_layer_gradients(layer, np.random.default_rng(1).standard_normal((2, length, 2)))


def test_maxpool1d_gradients_including_the_dropped_tail():
    # Distinct values 0.1 apart: no ties, and EPS cannot change which one is the max.
    x = np.random.default_rng(0).permutation(2 * 7 * 3).reshape(2, 7, 3) * 0.1
    layer = MaxPool1D(2)
    _check_layer_gradients(layer, x)
    layer.forward(x)
    assert not layer.backward(np.ones((2, 3, 3)))[:, 6].any()  # length 7 // 2 drops row 6


def test_flatten_gradients():
    _check_layer_gradients(Flatten(), np.random.default_rng(0).standard_normal((3, 4, 2)))


def test_relu_gradients():
    x = np.random.default_rng(0).standard_normal((4, 5))
    x[np.abs(x) < 0.1] = 0.5  # keep away from the kink, where the derivative is undefined
    _check_layer_gradients(ReLU(), x)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    _, dlogits = softmax_cross_entropy(logits, labels)
    numeric = _numeric_grad(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-9)


def test_a_whole_1d_cnn_gradient_end_to_end():
    model = build_model({"kind": "sequential", "input_shape": [12, 2], "layers": [
        {"type": "conv1d", "filters": 3, "kernel": 3, "stride": 2}, {"type": "relu"},
        {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 4},
    ]}, seed=3)
    for layer in model.layers:
        _to_float64(layer)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 12, 2))
    y = np.array([0, 3, 2])

    def loss() -> float:
        return softmax_cross_entropy(model.forward(x), y)[0]

    _, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    analytic = {name: g.copy() for name, g in model.grads().items()}
    for name, param in model.params().items():
        np.testing.assert_allclose(analytic[name], _numeric_grad(loss, param), rtol=1e-5,
                                   atol=1e-8, err_msg=name)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv1d_forward_matches_the_loop_reference(stride):
    layer = Conv1D(3, 4, 5, "c", np.random.default_rng(0), stride=stride)
    layer.bias[:] = [0.1, -0.2, 0.3, 0.0]
    x = np.random.default_rng(1).standard_normal((3, 17, 3)).astype(np.float32)
    out = layer.forward(x)
    assert out.shape == (3, (17 - 5) // stride + 1, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, _conv_reference(x, layer.weight, layer.bias, stride),
                               rtol=1e-5, atol=1e-5)


def test_maxpool1d_and_flatten_forward_by_hand():
    x = np.array([[[1, 10], [3, 0], [2, 5], [0, 7], [9, 9]]], dtype=np.float32)  # (1, 5, 2)
    pooled = MaxPool1D(2).forward(x)
    np.testing.assert_array_equal(pooled, [[[3, 10], [2, 7]]])
    np.testing.assert_array_equal(Flatten().forward(pooled), [[3, 10, 2, 7]])  # row-major


@pytest.mark.parametrize("layer, x, message", [
    (Conv1D(2, 3, 4, "c", np.random.default_rng(0)), np.zeros((1, 3, 2)), "length >= 4"),
    (Conv1D(2, 3, 4, "c", np.random.default_rng(0)), np.zeros((1, 8, 3)), r"\(n, length"),
    (Conv1D(2, 3, 4, "c", np.random.default_rng(0)), np.zeros((8, 2)), r"got \(8, 2\)"),
    (MaxPool1D(3), np.zeros((1, 2, 1)), "length >= 3"),
    (Dense(4, 2, "d", np.random.default_rng(0)), np.zeros((1, 4, 1)), r"expected \(n, 4\)"),
])
def test_layers_reject_wrong_input_shapes(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(x)


@pytest.mark.parametrize("make", [
    lambda: Conv1D(0, 3, 2, "c", np.random.default_rng(0)),
    lambda: Conv1D(2, 3, 2, "c", np.random.default_rng(0), stride=0),
    lambda: MaxPool1D(0),
    lambda: ActQuant("aq", momentum=1.0),
])
def test_layers_reject_bad_settings(make):
    with pytest.raises(ValueError):
        make()


def test_act_quant_ste_passes_inside_the_range_and_zeroes_outside():
    aq = ActQuant("aq")
    aq.range[:] = [-1.0, 1.0]
    x = np.array([[-3.0, -1.5, -0.99, -0.2, 0.0, 0.4, 0.99, 1.5, 3.0]], dtype=np.float32)
    out = aq.forward(x)
    np.testing.assert_array_equal(out, fake_quant_act(x, -1.0, 1.0))
    assert out[0, 0] == out[0, 1] == out.min() and out[0, -1] == out[0, -2] == out.max()
    grad = aq.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(grad, [[0, 0, 2, 2, 2, 2, 2, 0, 0]])


def test_act_quant_tracks_a_moving_average_while_training_and_freezes_in_eval():
    aq = ActQuant("aq", momentum=0.9)
    aq.training = True
    aq.forward(np.array([[-1.0, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(aq.range, [-1.0, 2.0])  # the first batch sets it
    aq.forward(np.array([[-3.0, 4.0]], dtype=np.float32))
    np.testing.assert_allclose(aq.range, [0.9 * -1 + 0.1 * -3, 0.9 * 2 + 0.1 * 4], rtol=1e-6)
    before = aq.range.copy()
    aq.training = False
    aq.forward(np.array([[-50.0, 50.0]], dtype=np.float32))
    np.testing.assert_array_equal(aq.range, before)
    assert aq.grads() == {} and list(aq.params()) == ["aq.range"]


def test_act_quant_ignores_a_diverged_batch():
    aq = ActQuant("aq")
    aq.training = True
    aq.forward(np.array([[-1.0, 2.0]], dtype=np.float32))
    with np.errstate(invalid="ignore"):
        aq.forward(np.array([[np.nan, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(aq.range, [-1.0, 2.0])


def test_act_quant_passes_values_through_until_a_range_is_observed():
    aq = ActQuant("aq")
    x = np.array([[0.123, -4.56]], dtype=np.float32)
    np.testing.assert_array_equal(aq.forward(x), x)
    np.testing.assert_array_equal(aq.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.parametrize("bad", [[np.nan, np.nan], [np.nan, 2.0], [-np.inf, 1.0],
                                 [2.0, -1.0]])
def test_act_quant_treats_a_range_no_batch_gives_as_unseen(bad):
    """What noise or a server optimizer may make of an averaged range: eval passes values
    through, and the next training batch sets the range afresh instead of failing."""
    aq = ActQuant("aq")
    aq.range[:] = bad
    assert not aq.observed()
    x = np.array([[-1.0, 0.5, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(aq.forward(x), x)
    aq.training = True
    aq.forward(x)
    np.testing.assert_array_equal(aq.range, [-1.0, 3.0])
    assert aq.observed()


def test_a_qat_model_with_a_broken_range_from_the_aggregator_still_trains():
    arch = {"kind": "mlp", "sizes": [4, 6, 3], "qat": True}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    trainer = NumpyTrainer(build_model(arch))
    config = TrainConfig(epochs=1, batch_size=16, lr=0.1, momentum=0.0)
    trainer.fit(x, y, config)
    weights = trainer.get_weights()
    for bad in ([np.nan, np.nan], [2.0, -1.0]):
        trainer.set_weights({**weights, "aq1.range": np.array(bad, np.float32)})
        assert np.isfinite(trainer.evaluate(x, y)["loss"])
        assert np.isfinite(trainer.fit(x, y, config).loss)
        lo, hi = trainer.get_weights()["aq1.range"]
        assert 0 <= lo <= hi and hi > 0  # after a ReLU: reset from the batches


def test_qat_dense_multiplies_by_int8_weights_and_passes_gradients_straight_through():
    rng = np.random.default_rng(0)
    float_layer, qat_layer = (Dense(6, 4, "d", np.random.default_rng(1), qat=q)
                              for q in (False, True))
    qat_layer.bias[:] = float_layer.bias[:] = [0.5, -0.5, 0.0, 1.0]
    x = rng.standard_normal((3, 6)).astype(np.float32)
    grad = rng.standard_normal((3, 4)).astype(np.float32)
    wq = fake_quant_weight(qat_layer.weight)
    assert qat_layer.qat and not np.array_equal(wq, qat_layer.weight)
    np.testing.assert_allclose(qat_layer.forward(x), x @ wq + qat_layer.bias, rtol=1e-6)
    dx = qat_layer.backward(grad)
    float_layer.forward(x)
    float_layer.backward(grad)
    np.testing.assert_allclose(qat_layer.grad_weight, float_layer.grad_weight)  # STE
    np.testing.assert_allclose(qat_layer.grad_bias, float_layer.grad_bias)
    np.testing.assert_allclose(dx, grad @ wq.T, rtol=1e-6)


def test_qat_conv1d_convolves_with_int8_weights():
    layer = Conv1D(2, 3, 3, "c", np.random.default_rng(0), stride=2, qat=True)
    x = np.random.default_rng(1).standard_normal((2, 9, 2)).astype(np.float32)
    wq = fake_quant_weight(layer.weight)
    np.testing.assert_allclose(layer.forward(x), _conv_reference(x, wq, layer.bias, 2),
                               rtol=1e-5, atol=1e-6)
    grad = np.ones((2, 4, 3), dtype=np.float32)
    layer.backward(grad)
    float_layer = Conv1D(2, 3, 3, "c", np.random.default_rng(0), stride=2)
    float_layer.forward(x)
    float_layer.backward(grad)
    np.testing.assert_allclose(layer.grad_weight, float_layer.grad_weight, rtol=1e-6)


def test_backward_before_forward_is_a_clear_error():
    for layer in (Dense(2, 2, "d", np.random.default_rng(0)),
                  Conv1D(1, 1, 1, "c", np.random.default_rng(0)), MaxPool1D(2), Flatten()):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.zeros((1, 2)))
