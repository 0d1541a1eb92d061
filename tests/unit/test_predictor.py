"""The Predictor: predictions per runtime, hot swaps under load, clear errors, the client hook."""

from __future__ import annotations

import re
import sys
import threading
import types

import numpy as np
import pytest

from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.export import ExportError
from edge_client.export.runtimes import RuntimeOptions
from edge_client.predictor import LoadedModel, Predictor
from edge_client.shared.protocol import Model, encode
from edge_client.training import NumpyTrainer, build_model
from tests.unit.export_models import digits, trained, vibration

SMALL = {"kind": "mlp", "sizes": [64, 8, 10]}


def _weights(arch: dict, seed: int) -> dict[str, np.ndarray]:
    return NumpyTrainer(build_model(arch, seed)).get_weights()


@pytest.mark.parametrize("runtime", ["numpy", "onnxruntime", "litert"])
@pytest.mark.parametrize("int8", [False, True])
def test_predict_gives_class_ids_and_probabilities(runtime, int8):
    arch, weights = trained("cnn-qat" if int8 else "cnn")
    x, y = vibration()[2:]
    predictor = Predictor(runtime, int8=int8)
    predictor.load(3, arch, weights)
    ids, proba = predictor.predict(x), predictor.predict_proba(x)
    assert predictor.version == 3
    assert ids.shape == (len(x),) and proba.shape == (len(x), 4)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5) and (proba >= 0).all()
    assert np.array_equal(proba.argmax(axis=1), ids)
    assert (ids == y).mean() > 0.85


def test_a_float_model_served_as_int8_is_calibrated_on_the_device():
    arch, weights = trained("mlp")
    x_train, _, x_test, y_test = digits()
    with pytest.raises(ExportError, match="calibration"):
        Predictor("litert", int8=True).load(1, arch, weights)
    predictor = Predictor("litert", int8=True, calibration=x_train[:200])
    predictor.load(1, arch, weights)
    assert (predictor.predict(x_test) == y_test).mean() > 0.85


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_one_thread_predicts_the_same(runtime):
    arch, weights = trained("cnn")
    x = vibration()[2]
    default, single = Predictor(runtime), Predictor(runtime, options=RuntimeOptions(threads=1))
    default.load(1, arch, weights)
    single.load(1, arch, weights)
    assert np.allclose(single.logits(x), default.logits(x), atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        RuntimeOptions(threads=0)


def test_nothing_to_predict_before_the_first_model():
    with pytest.raises(RuntimeError, match="no model loaded"):
        Predictor().predict(np.zeros((1, 64), np.float32))


def test_an_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="tflite-runtime"):
        Predictor("tensorflow")


@pytest.mark.parametrize("runtime", ["numpy", "litert"])
def test_input_of_the_wrong_shape_is_a_clear_error(runtime):
    predictor = Predictor(runtime)
    predictor.load(1, SMALL, _weights(SMALL, 0))
    for bad in (np.zeros((2, 63)), np.zeros(64), np.zeros((0, 64))):
        with pytest.raises(ValueError, match=r"\(n, 64\)"):
            predictor.predict(bad)


@pytest.mark.parametrize("runtime", ["numpy", "onnxruntime", "litert"])
@pytest.mark.parametrize("int8", [False, True])
def test_input_that_is_not_real_finite_numbers_is_a_clear_error(runtime, int8):
    """Not a class id for NaN (an int8 cast of NaN is undefined), nor a silent cast."""
    arch, weights = trained("mlp-qat")
    predictor = Predictor(runtime, int8=int8)
    predictor.load(1, arch, weights)
    good = digits()[2][:3]
    nan, inf = good.copy(), good.astype(np.float64)
    nan[1, 5] = np.nan
    inf[0, 0] = 1e39  # finite in float64, infinite as float32
    cases = [(nan, "1 NaN or infinite"), (inf, "1 NaN or infinite"),
             (good.astype(complex), "complex"), (good.astype(str), "<U"),
             (good.astype(object), "object")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            predictor.predict(bad)
    assert predictor.predict(good.astype(np.int64)).shape == (3,)


def test_a_new_version_replaces_the_old_and_an_older_one_does_not():
    x = digits()[2]
    predictor = Predictor("onnxruntime")
    predictor.load(1, SMALL, _weights(SMALL, 1))
    first = predictor.predict_proba(x)
    predictor.load(2, SMALL, _weights(SMALL, 2))
    second = predictor.predict_proba(x)
    assert predictor.version == 2 and not np.allclose(first, second)
    predictor.load(1, SMALL, _weights(SMALL, 1))  # late: the device never goes back
    assert predictor.version == 2 and np.array_equal(predictor.predict_proba(x), second)


def test_a_failed_load_keeps_the_old_model_serving():
    predictor = Predictor("litert")
    predictor.load(1, SMALL, _weights(SMALL, 1))
    bad = _weights(SMALL, 2)
    del bad["dense1.weight"]
    with pytest.raises(ExportError, match=r"dense1\.weight"):
        predictor.load(2, SMALL, bad)
    assert predictor.version == 1
    assert predictor.predict(digits()[2]).shape == (len(digits()[2]),)


class _Gated:
    """A model whose logits wait for a gate, to hold a predict in flight."""

    runtime, int8, size_bytes = "fake", False, 0

    def __init__(self, value: float) -> None:
        self.value = value
        self.entered, self.gate = threading.Event(), threading.Event()

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10)
        return np.full((len(x), 2), self.value, np.float32) + np.array([0, 1], np.float32)


def test_a_predict_in_flight_finishes_on_the_model_it_started_with():
    predictor = Predictor()
    old, new = _Gated(1.0), _Gated(5.0)
    new.gate.set()
    predictor.swap_in(LoadedModel(1, SMALL, old))
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        logits=predictor.logits(np.zeros((1, 64)))))
    worker.start()
    assert old.entered.wait(10)
    predictor.swap_in(LoadedModel(2, SMALL, new))  # swaps while the old one computes
    assert predictor.logits(np.zeros((1, 64)))[0, 0] == 5.0  # new calls see the new model
    old.gate.set()
    worker.join(10)
    assert result["logits"][0, 0] == 1.0


@pytest.mark.parametrize("runtime", ["numpy", "litert"])
def test_threads_predicting_through_swaps_always_see_one_whole_version(runtime):
    """Three threads predict while versions swap in; each sees every version, whole.

    Each swap waits until every thread has finished two predictions after it (so one
    started after it), with a generous deadline only against a hang: no timing guess.
    """
    x = digits()[2][:32]
    versions = {v: _weights(SMALL, v) for v in (1, 2, 3, 4)}
    expected = {}
    for v, w in versions.items():
        p = Predictor(runtime)
        p.load(v, SMALL, w)
        expected[v] = p.predict_proba(x)
    predictor = Predictor(runtime)
    predictor.load(1, SMALL, versions[1])
    errors, stop = [], threading.Event()
    counts = [0, 0, 0]
    seen: list[set[int]] = [set(), set(), set()]

    def serve(i: int) -> None:
        try:
            while not stop.is_set():
                proba = predictor.predict_proba(x)
                match = [v for v, e in expected.items() if np.allclose(proba, e, atol=1e-6)]
                if not match:
                    errors.append("a prediction matched no single version")
                seen[i].update(match)
                counts[i] += 1
        except Exception as exc:  # surfaced below
            errors.append(repr(exc))

    def two_more_each() -> None:
        marks = list(counts)
        for _ in range(6000):  # up to 60 s on a very busy machine
            if all(c >= m + 2 for c, m in zip(counts, marks, strict=True)) or errors:
                return
            stop.wait(0.01)
        raise AssertionError(f"threads stalled: {marks} -> {counts}")

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        two_more_each()
        for v in (2, 3, 4):
            predictor.load(v, SMALL, versions[v])
            two_more_each()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == [] and predictor.version == 4
    assert seen == [{1, 2, 3, 4}] * 3


# ------------------------------------------------------------ runtimes that are missing
@pytest.mark.parametrize(("runtime", "module", "extra"), [
    ("onnxruntime", "onnxruntime", "fedge[onnx]"),
    ("litert", "ai_edge_litert.interpreter", "fedge[litert]")])
def test_a_missing_runtime_names_the_extra_to_install(monkeypatch, runtime, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape(extra)):
        Predictor(runtime).load(1, SMALL, _weights(SMALL, 0))


def test_tflite_runtime_under_numpy_2_points_to_litert(monkeypatch):
    """tflite-runtime 2.14 imports under numpy 2 and fails when an interpreter is made."""
    def broken(**kwargs):
        raise AttributeError("_ARRAY_API not found")

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = broken
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    with pytest.raises(RuntimeError, match="runtime='litert'"):
        Predictor("tflite-runtime").load(1, SMALL, _weights(SMALL, 0))


# ------------------------------------------------------------ the EdgeClient hook
def _client(tmp_path, on_model) -> EdgeClient:
    config = ClientConfig(device_id="dev-0", state_dir=tmp_path,
                          eligibility=EligibilityConfig(enabled=False))
    x, y = digits()[:2]
    return EdgeClient(config, NumpyTrainer(build_model(SMALL)), x, y,
                      on_model=on_model)


def _store_model(tmp_path, version: int, weights) -> None:
    from edge_client.device_state import DeviceState

    blob = encode(Model(version=version, tensors=weights, arch=SMALL))
    DeviceState(tmp_path, "dev-0", 10**7).save_model(blob, version)


def test_the_client_hands_its_global_model_to_the_predictor(tmp_path):
    weights = _weights(SMALL, 7)
    _store_model(tmp_path, 4, weights)
    predictor = Predictor("onnxruntime")
    _client(tmp_path, predictor.load)  # loads its stored model on start
    assert predictor.version == 4
    direct = Predictor("numpy")
    direct.load(4, SMALL, weights)
    x = digits()[2]
    assert np.allclose(predictor.predict_proba(x), direct.predict_proba(x), atol=1e-5)


def test_a_failing_on_model_never_stops_the_client(tmp_path, caplog):
    _store_model(tmp_path, 2, _weights(SMALL, 1))

    def broken(version, arch, weights):
        raise RuntimeError("the app's runtime is gone")

    client = _client(tmp_path, broken)
    assert client.model_version == 2
    assert ("serving version 2 failed, the model served before stays: RuntimeError: the "
            "app's runtime is gone") in caplog.text
    assert "Traceback" not in caplog.text  # one line at ERROR; the traceback at DEBUG only
