"""`fedge export` on real stores, and a device serving what a real federation trained.

A QAT model is trained across devices over mosquitto while one device serves it with
a Predictor; `fedge export` (the installed command, in a subprocess) then writes the
same version from the aggregator's store, and onnxruntime on that file predicts what
the device's predictor predicts. The C header is compiled with the system compiler.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import Store
from edge_client.export import to_tflite
from edge_client.export.runtimes import OnnxModel, TfliteModel
from edge_client.predictor import Predictor
from edge_client.shared.protocol import Model, encode
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.training import NumpyTrainer, build_model, calibrate
from tests.integration.fleet import Digits, make_aggregator, make_client, start_all

pytestmark = pytest.mark.integration

FEDGE = [sys.executable, "-m", "fedge.cli"]
MLP = {"kind": "mlp", "sizes": [64, 16, 10]}


def _fedge(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDGE, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _store(path: Path, arch: dict, versions: dict[int, dict[str, np.ndarray]]) -> Path:
    store = Store(path)
    for version, weights in versions.items():
        blob = encode(Model(version=version, tensors=weights, arch=arch))
        store.add_model(version, blob, sha256_hex(blob), {"round": version})
    store.close()
    return path


def _weights(arch: dict, seed: int) -> dict[str, np.ndarray]:
    return NumpyTrainer(build_model(arch, seed)).get_weights()


@pytest.fixture(scope="module")
def digits2() -> Digits:
    return Digits(devices=2)


def test_a_device_serves_what_fedge_export_writes(mosquitto, tmp_path, digits2):
    arch = {**MLP, "qat": True}
    agg = make_aggregator(mosquitto, tmp_path, digits2, rounds=2,
                          initial=_weights(arch, 0), arch=arch)
    clients = [make_client(mosquitto, tmp_path, digits2, i,
                           trainer=NumpyTrainer(build_model(arch, seed=i)))
               for i in range(2)]
    predictor = Predictor("onnxruntime", int8=True)
    clients[0].on_model = predictor.load
    for run in start_all(agg, clients):
        run.join(90)
    assert agg.version == 2 and predictor.version == 2

    out = tmp_path / "model.onnx"
    done = _fedge("export", "--db", agg.config.db_path, "--format", "onnx", "--int8",
                  "--out", out)
    assert done.returncode == 0, done.stderr
    assert "onnx int8 (ranges from qat), model version 2" in done.stdout
    x, y = digits2.x_test, digits2.y_test
    exported = OnnxModel(out.read_bytes(), True, (64,))
    assert np.array_equal(exported.logits(x), predictor.logits(x))
    assert (predictor.predict(x) == y).mean() > 0.5  # two short rounds of a tiny model


def test_tflite_float_and_int8_from_a_calibrated_store(tmp_path):
    db = _store(tmp_path / "agg.sqlite3", MLP, {0: _weights(MLP, 0), 1: _weights(MLP, 1)})
    calib = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    for int8 in (False, True):
        out = tmp_path / f"m{int8}.tflite"
        extra = ["--int8", "--calibration", tmp_path / "calib.npz"] if int8 else []
        done = _fedge("export", "--db", db, "--format", "tflite", "--version", "0",
                      *extra, "--out", out)
        assert done.returncode == 0, done.stderr
        weights = _weights(MLP, 0)
        if int8:
            expected = to_tflite(*calibrate(MLP, weights, calib), int8=True)
        else:
            expected = to_tflite(MLP, weights)
        assert out.read_bytes() == expected
        assert TfliteModel(out.read_bytes(), "litert", (64,)).int8 is int8


def test_a_clustered_model_exports_one_cluster(tmp_path):
    from edge_client.shared.clusters import stack

    models = [_weights(MLP, 0), _weights(MLP, 1)]
    db = _store(tmp_path / "agg.sqlite3", MLP, {0: stack(models)})
    out = tmp_path / "c1.tflite"
    done = _fedge("export", "--db", db, "--format", "tflite", "--cluster", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == to_tflite(MLP, models[1])
    for extra, words in (([], "choose one with --cluster 0 to 1"),
                         (["--cluster", "2"], "choose one with --cluster 0 to 1")):
        done = _fedge("export", "--db", db, "--format", "onnx", *extra, "--out", out)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    plain = _store(tmp_path / "plain.sqlite3", MLP, {0: models[0]})
    done = _fedge("export", "--db", plain, "--format", "onnx", "--cluster", "0", "--out", out)
    assert done.returncode == 2 and "not clustered" in done.stderr


def test_the_config_leads_to_the_store(tmp_path):
    db = _store(tmp_path / "data" / "agg.sqlite3", MLP, {3: _weights(MLP, 3)})
    config = tmp_path / "aggregator.toml"
    config.write_text(f'federation = "plant"\ndb_path = "{db}"\n')
    done = _fedge("export", "--config", config, "--format", "onnx", "--out",
                  tmp_path / "m.onnx")
    assert done.returncode == 0, done.stderr
    assert "onnx float32, model version 3" in done.stdout


def test_the_c_header_compiles_and_holds_the_int8_model(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: apt-get install gcc (setup.sh does)")
    arch = {**MLP, "qat": True}
    weights = _weights(arch, 0)
    for i, name in enumerate(("aq0", "aq1", "aq2")):
        weights[f"{name}.range"] = np.array([-1.0 - i, 2.0 + i], np.float32)
    db = _store(tmp_path / "agg.sqlite3", arch, {5: weights})
    header = tmp_path / "model_data.h"
    done = _fedge("export", "--db", db, "--format", "c-header", "--out", header)
    assert done.returncode == 0, done.stderr
    expected = to_tflite(arch, weights, int8=True)
    (tmp_path / "main.c").write_text(
        '#include <stdint.h>\n#include <stdio.h>\n#include "model_data.h"\n'
        "int main(void) {\n"
        "  uint32_t h = 2166136261u;\n"
        "  for (unsigned i = 0; i < model_data_len; i++) { h ^= model_data[i]; "
        "h *= 16777619u; }\n"
        '  printf("%u %u %u\\n", model_data_len, (unsigned)((uintptr_t)model_data % 16), h);\n'
        "  return 0;\n}\n")
    exe = tmp_path / "main"
    subprocess.run([compiler, "-std=c11", "-Wall", "-Werror", "-o", exe,
                    tmp_path / "main.c"], check=True, cwd=tmp_path, timeout=60)
    length, misalignment, fnv = map(int, subprocess.run(
        [exe], capture_output=True, text=True, check=True, timeout=10).stdout.split())
    assert (length, misalignment, fnv) == (len(expected), 0, _fnv1a(expected))


def _fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "onnx", "--int8"], "needs --calibration"),
    (["--format", "c-header"], "needs --calibration"),
    (["--format", "tflite", "--version", "9"], "no model version 9"),
    (["--format", "tflite", "--int8", "--calibration", "missing.npz"], "need an .npz"),
])
def test_user_errors_exit_2_with_the_reason(tmp_path, args, message):
    db = _store(tmp_path / "agg.sqlite3", MLP, {0: _weights(MLP, 0)})
    out = tmp_path / "out.bin"
    done = _fedge("export", "--db", db, *args, "--out", out)
    assert done.returncode == 2 and message in done.stderr
    assert not out.exists()


def test_bad_calibration_files_and_versions_exit_2_not_a_traceback(tmp_path):
    db = _store(tmp_path / "agg.sqlite3", MLP, {0: _weights(MLP, 0)})
    np.save(tmp_path / "plain.npy", np.ones((5, 64), np.float32))
    np.savez(tmp_path / "good.npz", x=np.ones((5, 64), np.float32))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.onnx"
    for args, message in [
            (["--calibration", tmp_path / "plain.npy"], "not an .npz archive"),
            (["--calibration", tmp_path / "cut.npz"], "need an .npz with an array x"),
            (["--version", str(2**70)], f"no model version {2**70}")]:
        done = _fedge("export", "--db", db, "--format", "onnx", "--int8", *args, "--out", out)
        assert (done.returncode, "Traceback" in done.stderr) == (2, False), done.stderr
        assert message in done.stderr
    assert not out.exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    db = _store(tmp_path / "agg.sqlite3", MLP, {0: _weights(MLP, 0)})
    (tmp_path / "out").mkdir()  # --out names a folder: the rename fails
    done = _fedge("export", "--db", db, "--format", "onnx", "--out", tmp_path / "out")
    assert done.returncode == 2 and "Is a directory" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("agg")) == ["out"]
    written = _fedge("export", "--db", db, "--format", "onnx",
                     "--out", tmp_path / "new" / "dir" / "m.onnx")  # folders are made
    assert written.returncode == 0 and (tmp_path / "new" / "dir" / "m.onnx").stat().st_size


def test_a_missing_store_is_not_created(tmp_path):
    done = _fedge("export", "--db", tmp_path / "nope.sqlite3", "--format", "onnx",
                  "--out", tmp_path / "m.onnx")
    assert done.returncode == 2 and "no such aggregator store" in done.stderr
    assert not (tmp_path / "nope.sqlite3").exists()
