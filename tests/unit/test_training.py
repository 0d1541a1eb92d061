"""Tests for the numpy trainer: gradients, weight plumbing, FedProx, stopping, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.training import (
    SGD,
    Dense,
    NumpyTrainer,
    Sequential,
    TrainConfig,
    Trainer,
    flatten_sorted,
    mlp,
    mlp_trainer,
    softmax_cross_entropy,
    unflatten_like,
)


def _toy_data(n: int = 96, features: int = 8, classes: int = 3, seed: int = 0):
    """Linearly separable-ish blobs, enough for training to move the loss."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centers = rng.standard_normal((classes, features)) * 2
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y


def _as_float64(model: Sequential) -> None:
    """Gradient checks need float64; finite differences in float32 are mostly noise."""
    for layer in model.layers:
        if isinstance(layer, Dense):
            layer.weight = layer.weight.astype(np.float64)
            layer.bias = layer.bias.astype(np.float64) + 0.1


def _loss(model: Sequential, x: np.ndarray, y: np.ndarray) -> float:
    return softmax_cross_entropy(model.forward(x), y)[0]


def test_gradients_match_finite_differences():
    model = mlp([4, 5, 3], seed=1)
    _as_float64(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4))
    y = np.array([0, 1, 2, 1, 0, 2])

    _, dlogits = softmax_cross_entropy(model.forward(x), y)
    dx = model.backward(dlogits)
    analytic = {name: g.copy() for name, g in model.grads().items()}

    eps = 1e-6
    for name, param in model.params().items():
        numeric = np.zeros_like(param)
        for i in np.ndindex(param.shape):
            saved = param[i]
            param[i] = saved + eps
            plus = _loss(model, x, y)
            param[i] = saved - eps
            minus = _loss(model, x, y)
            param[i] = saved
            numeric[i] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)

    numeric_dx = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        plus = _loss(model, x, y)
        x[i] = saved - eps
        minus = _loss(model, x, y)
        x[i] = saved
        numeric_dx[i] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(dx, numeric_dx, rtol=1e-5, atol=1e-8)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]], dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert loss == pytest.approx(500.0)


def test_softmax_cross_entropy_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3), dtype=np.float32), np.array([0, 3]))


def test_flatten_unflatten_round_trip_keeps_order_and_dtype():
    weights = {
        "b.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a.bias": np.array([7.0, 8.0], dtype=np.float32),
    }
    vector = flatten_sorted(weights)
    assert vector.dtype == np.float32 and vector.shape == (8,)
    assert vector.tolist() == [7.0, 8.0, 0, 1, 2, 3, 4, 5]  # the one layout: sorted names
    restored = unflatten_like(vector, weights)
    assert list(restored) == ["b.weight", "a.bias"]
    for name, array in weights.items():
        assert restored[name].dtype == np.float32
        np.testing.assert_array_equal(restored[name], array)


def test_unflatten_copies_so_the_vector_can_be_reused():
    like = {"w": np.ones(3, dtype=np.float32)}
    vector = flatten_sorted(like)
    restored = unflatten_like(vector, like)
    vector[:] = 0
    np.testing.assert_array_equal(restored["w"], np.ones(3))


@pytest.mark.parametrize("size", [7, 9])
def test_unflatten_rejects_wrong_size(size):
    like = {"w": np.zeros((2, 4), dtype=np.float32)}
    with pytest.raises(ValueError, match=f"has {size} values, the model has 8"):
        unflatten_like(np.zeros(size, dtype=np.float32), like)


def test_trainer_satisfies_protocol():
    assert isinstance(mlp_trainer([4, 3]), Trainer)


def test_get_weights_returns_copies():
    trainer = mlp_trainer([4, 3])
    weights = trainer.get_weights()
    weights["dense0.weight"][:] = 42
    assert not np.any(trainer.get_weights()["dense0.weight"] == 42)


def test_set_weights_loads_values():
    trainer = mlp_trainer([4, 5, 3], seed=0)
    other = mlp_trainer([4, 5, 3], seed=1).get_weights()
    trainer.set_weights(other)
    for name, array in trainer.get_weights().items():
        np.testing.assert_array_equal(array, other[name])


def test_set_weights_rejects_wrong_names():
    trainer = mlp_trainer([4, 5, 3])
    weights = trainer.get_weights()
    weights["dense9.weight"] = weights.pop("dense1.weight")
    with pytest.raises(ValueError, match=r"missing \['dense1.weight'\].*unexpected"):
        trainer.set_weights(weights)


def test_set_weights_rejects_wrong_shapes():
    trainer = mlp_trainer([4, 5, 3])
    weights = trainer.get_weights()
    weights["dense0.weight"] = np.zeros((5, 4), dtype=np.float32)
    before = trainer.get_weights()
    with pytest.raises(ValueError, match=r"dense0.weight: expected \(4, 5\), got \(5, 4\)"):
        trainer.set_weights(weights)
    for name, array in trainer.get_weights().items():
        np.testing.assert_array_equal(array, before[name])


def test_param_count_of_demo_mlp():
    vector = flatten_sorted(mlp([64, 1333, 10]).params())
    assert vector.size == 99985


def test_fit_lowers_loss_and_stays_float32():
    x, y = _toy_data()
    trainer = mlp_trainer([8, 16, 3])
    before = trainer.evaluate(x, y)
    result = trainer.fit(x, y, TrainConfig(epochs=5, batch_size=16, lr=0.1))
    after = trainer.evaluate(x, y)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.8
    assert result.num_samples == len(x) and result.batches == 5 * 6
    assert not result.stopped_early and result.train_s > 0
    assert all(w.dtype == np.float32 for w in trainer.get_weights().values())


def test_fit_is_deterministic_for_a_seed():
    x, y = _toy_data()
    config = TrainConfig(epochs=2, batch_size=10, lr=0.05, momentum=0.9, seed=3)
    runs = []
    for _ in range(2):
        trainer = mlp_trainer([8, 16, 3], seed=7)
        result = trainer.fit(x, y, config)
        runs.append((result.loss, flatten_sorted(trainer.get_weights())))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])

    other = mlp_trainer([8, 16, 3], seed=7)
    other.fit(x, y, TrainConfig(epochs=2, batch_size=10, lr=0.05, momentum=0.9, seed=4))
    assert not np.array_equal(flatten_sorted(other.get_weights()), runs[0][1])


def _drift(prox_mu: float) -> float:
    x, y = _toy_data()
    trainer = mlp_trainer([8, 16, 3], seed=0)
    start = flatten_sorted(trainer.get_weights())
    trainer.fit(x, y, TrainConfig(epochs=5, batch_size=16, lr=0.05, prox_mu=prox_mu))
    end = flatten_sorted(trainer.get_weights())
    return float(np.linalg.norm(end - start))


def test_fedprox_term_limits_drift_from_start():
    plain, mild, strong = _drift(0.0), _drift(1.0), _drift(10.0)
    assert strong < mild < plain
    assert strong < 0.5 * plain


def test_should_stop_honoured_at_batch_boundary():
    x, y = _toy_data(n=100)
    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    trainer = mlp_trainer([8, 16, 3])
    result = trainer.fit(x, y, TrainConfig(epochs=3, batch_size=10), stop_after_three)
    assert result.batches == 3
    assert result.stopped_early
    assert calls == 4
    assert np.isfinite(result.loss)


def test_should_stop_before_first_batch_leaves_weights_alone():
    x, y = _toy_data()
    trainer = mlp_trainer([8, 16, 3])
    before = flatten_sorted(trainer.get_weights())
    result = trainer.fit(x, y, TrainConfig(epochs=1), lambda: True)
    assert result.batches == 0 and result.stopped_early and np.isnan(result.loss)
    np.testing.assert_array_equal(flatten_sorted(trainer.get_weights()), before)


def test_sgd_momentum_matches_hand_computation():
    param = np.array([1.0, -2.0], dtype=np.float32)
    grad = np.array([0.5, 1.0], dtype=np.float32)
    sgd = SGD(lr=0.1, momentum=0.9)
    sgd.step({"p": param}, {"p": grad})
    # v1 = g = [0.5, 1.0]; p1 = p0 - 0.1 * v1
    np.testing.assert_allclose(param, [0.95, -2.1], rtol=1e-6)
    sgd.step({"p": param}, {"p": grad})
    # v2 = 0.9 * v1 + g = [0.95, 1.9]; p2 = p1 - 0.1 * v2
    np.testing.assert_allclose(param, [0.855, -2.29], rtol=1e-6)
    assert param.dtype == np.float32


def test_sgd_without_momentum_is_plain_gradient_step():
    param = np.array([1.0], dtype=np.float32)
    sgd = SGD(lr=0.5)
    sgd.step({"p": param}, {"p": np.array([2.0], dtype=np.float32)})
    np.testing.assert_allclose(param, [0.0])
    assert sgd.velocity == {}


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"momentum": 1.0}, {"prox_mu": -1.0}],
)
def test_fit_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_fit_rejects_mismatched_data():
    trainer = mlp_trainer([8, 3])
    x, y = _toy_data()
    with pytest.raises(ValueError, match="y must be 1-D"):
        trainer.fit(x, y[:-1], TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="expected"):
        trainer.fit(x[:, :4], y, TrainConfig(epochs=1))


def test_evaluate_reports_loss_and_accuracy():
    x, y = _toy_data()
    metrics = mlp_trainer([8, 3]).evaluate(x, y)
    assert set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def test_custom_sequential_needs_unique_names():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unique"):
        Sequential([Dense(2, 2, "d", rng), Dense(2, 2, "d", rng)])
    assert isinstance(NumpyTrainer(Sequential([Dense(2, 2, "d", rng)])), Trainer)
