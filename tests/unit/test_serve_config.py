"""The device's [serve] table (docs/configuration.md): parsed into ServeConfig with
one-line errors naming the key, and `fedge device` serving with a Predictor."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np
import pytest

from edge_client.client_config import SERVE_RUNTIMES, ClientConfig, ServeConfig
from edge_client.export.runtimes import RUNTIMES
from edge_client.shared.settings import ConfigError, from_table
from edge_client.training import mlp_trainer
from fedge.cli import main
from fedge.roles import build_device, build_device_run

ARCH = {"kind": "mlp", "sizes": [64, 4, 3]}


def _parse(serve: dict) -> ClientConfig:
    return from_table(ClientConfig, {"device_id": "d", "serve": serve}, "device.toml")


def test_the_names_match_the_predictors_runtimes():
    assert SERVE_RUNTIMES == RUNTIMES


def test_no_serve_table_serves_nothing():
    assert _parse({}).serve == ServeConfig() and not ServeConfig().enabled


@pytest.mark.parametrize("runtime", SERVE_RUNTIMES)
def test_a_good_table_is_read(tmp_path, runtime):
    serve = _parse({"enabled": True, "runtime": runtime, "int8": True,
                    "watch": str(tmp_path / "in"), "poll_s": 2}).serve
    assert serve == ServeConfig(True, runtime, True, tmp_path / "in", 2.0)


@pytest.mark.parametrize(("table", "message"), [
    ({"enabled": "yes"}, "device.toml [serve] enabled must be bool, got str"),
    ({"enabled": True, "runtime": "onnx"}, "device.toml [serve]: runtime 'onnx' is not known; "
                                          "use one of numpy, onnxruntime, litert, tflite-runtime"),
    ({"enabled": True, "int8": 1}, "device.toml [serve] int8 must be bool, got int"),
    ({"enabled": True, "poll_s": 0}, "device.toml [serve]: poll_s must be > 0, not 0.0"),
    ({"enabled": True, "watch": 3}, "device.toml [serve] watch must be a path string"),
    ({"watch": "in"}, "device.toml [serve]: watch needs enabled = true"),
    ({"enabled": True, "port": 1}, "unknown key 'port' in device.toml [serve]; known keys: "
                                  "['enabled', 'int8', 'poll_s', 'runtime', 'watch']"),
])
def test_a_bad_value_is_one_line_naming_the_key(table, message):
    with pytest.raises(ConfigError) as caught:
        _parse(table)
    assert str(caught.value) == message


def test_watch_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"\[serve\]: watch .*file is not a folder"):
        _parse({"enabled": True, "watch": str(tmp_path / "file")})


def _device_toml(tmp_path, serve: str) -> object:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 64), dtype=np.float32),
             y=rng.integers(0, 3, 40))
    config = tmp_path / "device.toml"
    config.write_text(f'device_id = "d"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[model]\nsizes = [64, 4, 3]\n[data]\npath = "{tmp_path / "d.npz"}"\n'
                      + serve)
    return config


def test_without_serve_the_device_reports_no_drift(tmp_path):
    client = build_device(_device_toml(tmp_path, ""))
    assert client.on_model is None and client.session.status.drift is None


def test_a_bad_serve_table_is_a_one_line_error_of_fedge_device(tmp_path, capsys):
    config = _device_toml(tmp_path, '[serve]\nenabled = true\nruntime = "tflite"\n')
    assert main(["device", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedge device: ") and "runtime 'tflite' is not known" in err
    assert "\n" not in err


def test_a_missing_runtime_is_named_at_start(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    config = _device_toml(tmp_path, '[serve]\nenabled = true\nruntime = "onnxruntime"\n')
    with pytest.raises(ConfigError, match=r"\[serve\] runtime 'onnxruntime' needs onnxruntime: "
                                          r"pip install 'fedge\[onnx\]'"):
        build_device(config)


def test_serve_builds_a_predictor_that_serves_and_watches_drift(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = _device_toml(tmp_path, f'[serve]\nenabled = true\nwatch = "{tmp_path / "in"}"\n'
                                    'poll_s = 0.05\n')
    device = build_device_run(config)
    folder = device.folder
    assert folder is not None
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(1)
    np.save(tmp_path / "in" / "a.npy", rng.random((7, 64), dtype=np.float32))
    (tmp_path / "in" / "broken.npy").write_bytes(b"not an array")
    np.save(tmp_path / "in" / "wrong.npy", np.zeros((2, 5), np.float32))
    assert folder.serve_pending() == 0  # no model yet: the batches wait
    assert "wait for the first model" in caplog.text
    weights = mlp_trainer(ARCH["sizes"], 0).get_weights()
    device.client.on_model(1, ARCH, weights)
    assert folder.serve_pending() == 1 and folder.serve_pending() == 0  # done once
    predicted = np.load(tmp_path / "in" / "a.pred.npy")
    assert predicted.shape == (7,) and predicted.dtype == np.int64
    assert not (tmp_path / "in" / "broken.pred.npy").exists()
    assert caplog.text.count("skipped until it changes") == 2  # once each, not every poll
    report = device.client.session.status.drift()
    assert report is not None and report.seen == 7
    device.client.on_model(2, ARCH, weights)
    assert "serve: now serving version 1 (numpy)" in caplog.text
    assert "serve: now serving version 2 (numpy); was version 1" in caplog.text
    np.save(tmp_path / "in" / "wrong.npy", np.zeros((3, 64), np.float32))  # fixed: served
    assert folder.serve_pending() == 1
    assert "wrong.npy: 3 inputs predicted by version 2" in caplog.text


def test_the_folder_stops_with_the_device(tmp_path):
    config = _device_toml(tmp_path, f'[serve]\nenabled = true\nwatch = "{tmp_path / "in"}"\n'
                                    'poll_s = 0.05\n')
    device = build_device_run(config)
    assert device.folder is not None
    stop = threading.Event()
    thread = threading.Thread(target=device.folder.run, args=(stop,))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and (tmp_path / "in").is_dir()


def test_a_device_with_serve_off_loads_no_predictor_or_exporter(tmp_path):
    """The import contract: serving (and any runtime) loads only when configured."""
    config = _device_toml(tmp_path, "")
    code = ("import sys\nfrom fedge.roles import build_device\n"
            f"build_device({str(config)!r})\n"
            "print(' '.join(m for m in sys.modules if m.startswith("
            "('edge_client.predictor', 'edge_client.serve_folder', 'onnxruntime', "
            "'ai_edge_litert', 'tflite_runtime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_int8_calibrates_a_float_model_on_the_training_inputs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    device = build_device_run(_device_toml(tmp_path, "[serve]\nenabled = true\nint8 = true\n"))
    assert device.folder is None
    device.client.on_model(1, ARCH, mlp_trainer(ARCH["sizes"], 0).get_weights())
    assert "serve: now serving version 1 (numpy, int8)" in caplog.text
