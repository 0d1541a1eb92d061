"""A user's typical mistakes with today's features get a clear message and exit status 2,
at start, from the real `fedge` command; the shipped example configs still load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import Store
from edge_client.client import ClientConfig
from edge_client.shared.protocol import Model, encode
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.shared.settings import ConfigError, from_table, read_toml
from edge_client.training import mlp_trainer
from fedge.broker import free_port
from fedge.roles import DataSpec, ModelSpec, _aggregator_tables, check_data_fits
from firmware_bridge.null_modem import NullModem

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FEDGE = [sys.executable, "-m", "fedge.cli"]


def _fedge(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDGE, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("toml, message", [
    ('[sync]\ntarget_updates = 3\nmin_fraction = 1.0\n[secagg]\nenabled = true\n'
     '[uplink]\nsparsify = "topk"\nquantize = "q4"\n',
     "secagg.enabled = true does not work with uplink.sparsify = 'topk'"),
    ('[sync]\ntarget_updates = 3\nmin_fraction = 1.0\n[secagg]\nenabled = true\n'
     '[uplink]\nquantize = "q8"\n',
     "secagg.enabled = true replaces [uplink]"),
    ('[model]\nkind = "sequential"\nlayers = [{type = "dense", units = 4}]\n',
     "[model] input_shape must be [features] or [length, channels], got []"),
    ('[model]\nkind = "sequential"\ninput_shape = [32, 2]\n'
     'layers = [{type = "conv1d", filters = 4}]\n',
     "[model] layers[0] (conv1d): missing key 'kernel'"),
    ('[secagg]\nenabled = true\n[privacy]\nmode = "central"\n',
     "does not work with privacy.mode = 'central'"),
    ('[train]\npartial_work = "sometimes"\n', "partial_work must be one of"),
    ('[uplink]\nsparsify = "topk"\nenergy = 0.5\n', "max_fraction must be in [fraction, 1]"),
    ('[downlink.codec]\nsparsify = "topk"\nquantize = "q8"\nenergy = 0.5\n'
     'max_fraction = 0.1\n', "energy (adaptive top-k) is for the uplink only"),
])
def test_aggregator_mistakes_are_refused_at_start(tmp_path, toml, message):
    config = tmp_path / "agg.toml"
    config.write_text(f'port = {free_port()}\ndb_path = "{tmp_path / "a.sqlite3"}"\n{toml}')
    done = _fedge("aggregator", "serve", "--config", config)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "a.sqlite3").exists()  # refused before anything was stored


def test_export_int8_of_a_float_model_asks_for_calibration(tmp_path):
    arch = {"kind": "mlp", "sizes": [8, 4, 3]}
    store = Store(tmp_path / "agg.sqlite3")
    blob = encode(Model(version=1, tensors=mlp_trainer([8, 4, 3]).get_weights(), arch=arch))
    store.add_model(1, blob, sha256_hex(blob), {"round": 1})
    store.close()
    out = tmp_path / "m.tflite"
    done = _fedge("export", "--db", tmp_path / "agg.sqlite3", "--format", "tflite", "--int8",
                  "--out", out)
    assert done.returncode == 2
    assert "is a float model (no qat): int8 needs --calibration" in done.stderr
    assert not out.exists()
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(20, 8)))
    done = _fedge("export", "--db", tmp_path / "agg.sqlite3", "--format", "tflite", "--int8",
                  "--calibration", tmp_path / "calib.npz", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "(calibrated on 20 samples)" in done.stdout and out.read_bytes()[4:8] == b"TFL3"


@pytest.mark.parametrize("x_shape, labels, message", [
    ((30, 32, 2), 2, "x of shape (30, 32, 2) does not fit [model]"),
    ((30, 8), 4, "labels y must be 0 to 2 for this [model], got 0 to 4"),
    ((30, 8), -1, "labels y must be 0 to 2 for this [model], got -1 to 2"),
])
def test_device_data_that_does_not_fit_the_model_is_refused_at_start(tmp_path, x_shape,
                                                                     labels, message):
    rng = np.random.default_rng(0)
    y = np.arange(x_shape[0]) % 3
    y[-1] = labels
    np.savez(tmp_path / "data.npz", x=rng.normal(size=x_shape).astype(np.float32), y=y)
    config = tmp_path / "dev.toml"  # no broker on the port: an old fedge device would wait
    config.write_text(f'device_id = "d"\nport = {free_port()}\nstate_dir = "{tmp_path / "s"}"\n'
                      f'[model]\nsizes = [8, 4, 3]\n[data]\npath = "{tmp_path / "data.npz"}"\n')
    done = _fedge("device", "--config", config)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bridge_refuses_a_bad_device_config_before_waiting_for_samples(tmp_path):
    config = tmp_path / "mcu-device.toml"
    config.write_text('devce_id = "mcu"\n[model]\nsizes = [4, 8, 3]\n')  # a typo
    wire = NullModem()  # no MCU on the other end: no samples would ever come
    try:
        done = _fedge("bridge", "--port", wire.bridge_port, "--data-dir", tmp_path / "mcu",
                      "--device-config", config, "--min-samples", "10", timeout=30)
    finally:
        wire.close()
    assert done.returncode == 2
    assert "unknown key 'devce_id'" in done.stderr


def test_the_shipped_example_configs_load():
    config, spec, _ = _aggregator_tables(REPO / "examples/gateway/aggregator.toml")
    assert config.federation == "plant-7" and spec.arch() == {"kind": "mlp",
                                                              "sizes": [64, 1333, 10]}
    assert config.anomalies.window == 10 and not config.secagg.enabled
    assert spec.trainer().get_weights()["dense0.weight"].shape == (64, 1333)
    table = read_toml(REPO / "examples/device_app/device.toml")
    model, data = table.pop("model"), table.pop("data")
    device = from_table(ClientConfig, table, "device.toml")
    assert device.device_id == "pi-kitchen" and device.federation == config.federation
    assert from_table(ModelSpec, model, "[model]").arch() == spec.arch()  # they must match
    assert from_table(DataSpec, data, "[data]").path == Path("/var/lib/fedge/data.npz")
    with pytest.raises(ConfigError, match="does not fit"):
        check_data_fits(spec.trainer(), np.zeros((2, 10), np.float32), np.zeros(2, np.int64),
                        "[data]")


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p, x=np.full((4, 8), np.nan, np.float32), y=np.arange(4) % 3),
     "x holds NaN or infinite values in 4 of 4 samples"),
    (lambda p: np.savez(p, x=np.ones((4, 8), np.float32), y=np.array([0, 1.5, 2, 0])),
     "labels y must be whole numbers; y[1] is 1.5"),
    (lambda p: p.write_text("x,y\n1,2\n"), "not an .npz archive"),
])
def test_device_data_with_bad_values_is_refused_at_start(tmp_path, make, message):
    """NaN samples crashed `fedge device` at its first task, float labels were silently
    truncated, and a text file got advice about allow_pickle."""
    data = tmp_path / "data.npz"
    make(data)
    config = tmp_path / "dev.toml"
    config.write_text(f'device_id = "d"\nport = {free_port()}\nstate_dir = "{tmp_path / "s"}"\n'
                      f'[model]\nsizes = [8, 4, 3]\n[data]\npath = "{data}"\n')
    done = _fedge("device", "--config", config)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert "allow_pickle" not in done.stderr


def _commented_tables(text: str) -> dict[str, str]:
    """Each `# [table]` block of the example, uncommented: '# key = 1  # why' -> 'key = 1'."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# [") and "]" in stripped:
            name = stripped[2:stripped.index("]") + 1]
            blocks[name] = name + "\n"
        elif name and stripped.startswith("# ") and "=" in stripped.split("#")[1]:
            blocks[name] += stripped[2:] + "\n"
        elif not stripped:
            name = None
    return blocks


def test_every_commented_key_of_the_example_gateway_config_is_a_real_key(tmp_path):
    example = (REPO / "examples/gateway/aggregator.toml").read_text()
    blocks = _commented_tables(example)
    assert {"[privacy]", "[secagg]", "[dashboard]", "[security]", "[broker_auth]"} <= set(blocks)
    for name, block in blocks.items():
        kept = "\n".join(line for line in example.splitlines()
                         if not line.startswith(name))  # the empty [evaluation] stays
        path = tmp_path / "agg.toml"
        path.write_text(kept + "\n" + block)
        try:
            _aggregator_tables(path)
        except ConfigError as exc:  # settings that exclude each other are fine here
            assert "unknown" not in str(exc) and "wrong type" not in str(exc), (name, exc)
