"""build_model(arch, seed), QAT in the numpy trainer, and [model] in the role configs."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from edge_client.shared.portable_random import PortableRandom
from edge_client.shared.settings import ConfigError, from_table
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
    mlp,
    mlp_trainer,
)
from fedge.roles import ModelSpec

CNN = {"kind": "sequential", "input_shape": [128, 3], "layers": [
    {"type": "conv1d", "filters": 8, "kernel": 5, "stride": 1}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 32},
    {"type": "relu"}, {"type": "dense", "units": 4}], "qat": True}


def _describe(model) -> list[str]:
    return [getattr(layer, "name", type(layer).__name__) for layer in model.layers]


def test_mlp_keeps_its_names_and_he_initial_weights():
    """Stored models and existing devices rely on mlp(sizes, seed) never changing."""
    sizes, seed = [64, 1333, 10], 0
    rng = np.random.default_rng(seed)
    expected = {}
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        weight = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
        expected[f"dense{i}.weight"] = weight.astype(np.float32)
        expected[f"dense{i}.bias"] = np.zeros(n_out, np.float32)
    params = mlp(sizes, seed).params()
    assert list(params) == list(expected)
    for name, array in expected.items():
        assert params[name].dtype == np.float32
        assert params[name].tobytes() == array.tobytes(), name
    assert _describe(mlp(sizes, seed)) == ["dense0", "ReLU", "dense1"]


def test_build_model_mlp_is_mlp_and_qat_adds_only_ranges():
    float_model = build_model({"kind": "mlp", "sizes": [8, 16, 3]}, seed=5)
    for name, array in mlp([8, 16, 3], seed=5).params().items():
        np.testing.assert_array_equal(float_model.params()[name], array)
    qat_model = build_model({"kind": "mlp", "sizes": [8, 16, 3], "qat": True}, seed=5)
    assert _describe(qat_model) == ["aq0", "dense0", "ReLU", "aq1", "dense1", "aq2"]
    qat_params = qat_model.params()
    for name, array in float_model.params().items():
        np.testing.assert_array_equal(qat_params[name], array)  # same draws, same order
    assert sorted(set(qat_params) - set(float_model.params())) == ["aq0.range", "aq1.range",
                                                                   "aq2.range"]


def test_the_contract_cnn_has_its_layers_names_and_shapes():
    model = build_model(CNN, seed=0)
    assert _describe(model) == ["aq0", "conv0", "ReLU", "aq1", "MaxPool1D", "Flatten", "dense0",
                                "ReLU", "aq2", "dense1", "aq3"]
    kinds = [type(layer) for layer in model.layers]
    assert kinds == [ActQuant, Conv1D, ReLU, ActQuant, MaxPool1D, Flatten, Dense, ReLU, ActQuant,
                     Dense, ActQuant]
    conv = model.layers[1]
    assert conv.weight.shape == (5, 3, 8) and conv.stride == 1 and conv.kernel == 5 and conv.qat
    assert model.layers[4].size == 2
    assert model.layers[6].weight.shape == (62 * 8, 32)  # (128 - 5 + 1) // 2 = 62 positions
    assert model.forward(np.zeros((2, 128, 3), np.float32)).shape == (2, 4)


def test_act_quant_follows_a_block_without_relu_and_pool_keeps_quantization():
    arch = {"kind": "sequential", "input_shape": [20, 1], "qat": True, "layers": [
        {"type": "conv1d", "filters": 2, "kernel": 3, "stride": 2},
        {"type": "maxpool1d", "size": 3}, {"type": "conv1d", "filters": 2, "kernel": 1},
        {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "units": 5}]}
    model = build_model(arch)
    assert _describe(model) == ["aq0", "conv0", "aq1", "MaxPool1D", "conv1", "ReLU", "aq2",
                                "Flatten", "dense0", "aq3"]
    assert model.layers[4].weight.shape == (1, 2, 2)
    assert model.forward(np.zeros((1, 20, 1), np.float32)).shape == (1, 5)


def test_the_same_seed_builds_the_same_cnn_and_another_seed_does_not():
    a, b, c = (build_model(CNN, seed=s).params() for s in (1, 1, 2))
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert not np.array_equal(a["conv0.weight"], c["conv0.weight"])


def _with_layer(index: int, layer: dict) -> dict:
    layers = [dict(spec) for spec in CNN["layers"]]
    layers[index] = layer
    return {**CNN, "layers": layers}


@pytest.mark.parametrize("arch, message", [
    ({"kind": "cnn"}, "kind 'cnn' is not known"),
    ({"sizes": [4, 2]}, "kind None is not known"),
    ([1, 2], "must be a dict"),
    ({"kind": "mlp"}, "missing key 'sizes'"),
    ({"kind": "mlp", "sizes": [4]}, "at least input and output"),
    ({"kind": "mlp", "sizes": [4, 0]}, r"sizes\[1\] must be a positive integer"),
    ({"kind": "mlp", "sizes": [4, True]}, r"sizes\[1\] must be a positive integer"),
    ({"kind": "mlp", "sizes": [4, 2], "qat": "yes"}, "qat must be true or false"),
    ({"kind": "mlp", "sizes": [4, 2], "layers": []}, r"unknown keys \['layers'\]"),
    ({"kind": "sequential", "layers": []}, "missing key 'input_shape'"),
    ({**CNN, "input_shape": [1, 2, 3]}, "input_shape must be"),
    ({**CNN, "input_shape": [128, -3]}, r"input_shape\[1\] must be a positive integer"),
    ({**CNN, "layers": []}, "non-empty list"),
    (_with_layer(0, {"type": "conv2d"}), r"layers\[0\]: type 'conv2d' is not known"),
    (_with_layer(0, "conv1d"), r"layers\[0\] must be a table"),
    (_with_layer(0, {"type": "conv1d", "filters": 8}), r"layers\[0\] \(conv1d\): missing key "
                                                      "'kernel'"),
    (_with_layer(0, {"type": "conv1d", "filters": 8, "kernel": 5, "stride": 0}),
     r"layers\[0\] \(conv1d\) stride must be a positive integer"),
    (_with_layer(0, {"type": "conv1d", "filters": 8, "kernel": 500}), "longer than the input"),
    (_with_layer(2, {"type": "maxpool1d", "size": 2.5}), r"\(maxpool1d\) size must be"),
    (_with_layer(4, {"type": "dense", "unit": 32}), r"layers\[4\] \(dense\): missing key 'units'"),
    (_with_layer(4, {"type": "dense", "units": 32, "act": "relu"}), r"unknown keys \['act'\]"),
    (_with_layer(3, {"type": "relu"}), r"layers\[4\] \(dense\).*put a flatten before it"),
    ({**CNN, "layers": CNN["layers"][:3]}, r"must give flat logits .* gives \(n, 62, 8\)"),
    (_with_layer(1, {"type": "dense", "units": 3}), r"layers\[1\] \(dense\): dense needs a flat"),
])
def test_bad_archs_say_what_is_wrong(arch, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch)


def _windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of (32, 2) windows: a slow and a fast sine, random phase, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = np.sin(2 * np.pi * np.where(y[:, None] == 1, 0.25, 0.05) * t + phase)
    x = np.stack([wave, -wave], axis=2) + 0.3 * rng.standard_normal((n, 32, 2))
    return x.astype(np.float32), y


SMALL_CNN = {"kind": "sequential", "input_shape": [32, 2], "layers": [
    {"type": "conv1d", "filters": 4, "kernel": 5, "stride": 2}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 2}]}


@pytest.mark.parametrize("qat", [False, True])
def test_the_trainer_fits_a_1d_cnn_on_windows(qat):
    x, y = _windows(1200)
    trainer = NumpyTrainer(build_model({**SMALL_CNN, "qat": qat}, seed=0))
    before = trainer.evaluate(x, y)
    result = trainer.fit(x, y, TrainConfig(epochs=3, batch_size=32, lr=0.05, momentum=0.5))
    after = trainer.evaluate(x, y)  # 1200 rows: evaluated in two chunks
    assert result.batches == 3 * 38 and after["loss"] < before["loss"]
    assert after["accuracy"] > 0.9
    assert all(w.dtype == np.float32 for w in trainer.get_weights().values())
    logits = trainer.model.forward(x[:5])
    np.testing.assert_array_equal(logits, trainer.model.forward(x[:5]))  # eval changes nothing


def test_fit_tracks_ranges_and_neither_sgd_nor_fedprox_moves_them():
    """aq0 sees the raw input, so its range is an EMA of batch min/max we can compute here."""
    x, y = _windows(100, seed=1)
    trainer = NumpyTrainer(build_model({**SMALL_CNN, "qat": True}))
    config = TrainConfig(epochs=2, batch_size=16, lr=0.5, momentum=0.9, prox_mu=5.0, seed=3)
    trainer.fit(x, y, config)
    expected = None
    for epoch in range(2):
        order = PortableRandom(3, epoch).permutation(len(x))  # the trainer's shuffle
        for begin in range(0, len(x), 16):
            batch = x[order[begin:begin + 16]]
            seen = np.array([batch.min(), batch.max()], np.float32)
            expected = seen if expected is None else 0.99 * expected + 0.01 * seen
    np.testing.assert_allclose(trainer.get_weights()["aq0.range"], expected, rtol=1e-5)
    assert all(not layer.training for layer in trainer.model.layers
               if isinstance(layer, ActQuant))


def test_a_stopped_fit_leaves_act_quant_in_eval_mode():
    x, y = _windows(64)
    trainer = NumpyTrainer(build_model({**SMALL_CNN, "qat": True}))
    calls = iter([False, False, True])
    result = trainer.fit(x, y, TrainConfig(epochs=1, batch_size=8), lambda: next(calls))
    assert result.stopped_early and result.batches == 2
    assert not trainer.model.layers[0].training


def test_qat_weights_round_trip_through_set_weights_with_their_ranges():
    x, y = _windows(64)
    trained = NumpyTrainer(build_model({**SMALL_CNN, "qat": True}, seed=0))
    trained.fit(x, y, TrainConfig(epochs=1))
    fresh = NumpyTrainer(build_model({**SMALL_CNN, "qat": True}, seed=9))
    fresh.set_weights(trained.get_weights())
    np.testing.assert_array_equal(fresh.model.forward(x), trained.model.forward(x))
    with pytest.raises(ValueError, match=r"missing \['aq0.range'"):
        fresh.set_weights(NumpyTrainer(build_model(SMALL_CNN)).get_weights())


def test_the_trainer_rejects_one_dimensional_x():
    with pytest.raises(ValueError, match=r"x must be \(samples, features\) or"):
        mlp_trainer([4, 2]).fit(np.zeros(4, np.float32), np.zeros(4, np.int64),
                                TrainConfig(epochs=1))
    with pytest.raises(ValueError, match=r"conv0: expected \(n, length >= 5, 2\)"):
        NumpyTrainer(build_model(SMALL_CNN)).evaluate(np.zeros((3, 32), np.float32),
                                                      np.zeros(3, np.int64))


def test_model_spec_mlp_arch_is_unchanged_and_qat_is_added():
    spec = from_table(ModelSpec, {"sizes": [8, 16, 3]}, "[model]")
    assert spec.arch() == {"kind": "mlp", "sizes": [8, 16, 3]}
    assert list(spec.trainer().get_weights()) == ["dense0.weight", "dense0.bias",
                                                  "dense1.weight", "dense1.bias"]
    qat = from_table(ModelSpec, {"sizes": [8, 16, 3], "qat": True}, "[model]")
    assert qat.arch() == {"kind": "mlp", "sizes": [8, 16, 3], "qat": True}
    assert "aq2.range" in qat.trainer().get_weights()


def test_model_spec_builds_a_sequential_model_from_its_table():
    table = {"kind": "sequential", "qat": True, "seed": 4, "input_shape": [128, 3],
             "layers": [dict(spec) for spec in CNN["layers"]]}
    spec = from_table(ModelSpec, table, "[model]")
    assert spec.arch() == CNN
    weights = spec.trainer().get_weights()
    expected = build_model(CNN, seed=4).params()
    assert list(weights) == list(expected)
    np.testing.assert_array_equal(weights["conv0.weight"], expected["conv0.weight"])


@pytest.mark.parametrize("table, message", [
    ({"kind": "cnn"}, r"\[model\] kind 'cnn' is not known"),
    ({"sizes": [8]}, r"\[model\] sizes must be two or more"),
    ({"layers": [{"type": "relu"}]}, r"\[model\] input_shape and layers are for kind = "
                                     "'sequential'"),
    ({"kind": "sequential", "input_shape": [128, 3]}, r"\[model\] layers must be a non-empty"),
    ({"kind": "sequential", "input_shape": [128, 3], "layers": [{"type": "flatten"},
                                                                {"type": "dense"}]},
     r"\[model\] layers\[1\] \(dense\): missing key 'units'"),
    ({"kind": "sequential", "input_shape": [], "layers": [{"type": "flatten"}]},
     r"\[model\] input_shape must be"),
])
def test_model_spec_errors_name_the_key(table, message):
    spec = from_table(ModelSpec, table, "[model]")
    with pytest.raises(ConfigError, match=message):
        spec.trainer()


def test_model_spec_rejects_a_non_bool_qat():
    with pytest.raises(ConfigError, match="qat must be bool"):
        from_table(ModelSpec, {"qat": 1}, "[model]")
