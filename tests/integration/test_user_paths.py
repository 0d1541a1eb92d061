"""Today's features as a user runs them: `fedge` processes from TOML files over mosquitto.

1. `[secagg] enabled = true` with `[privacy] mode = "distributed"`: versions come from
   masked sums, carry their epsilon, and the REST API shows it and the [anomalies] keys.
2. A QAT `[model] kind = "sequential"` federation, then `fedge export --int8 --format
   tflite` on its store; the file runs in LiteRT and agrees with the int8 reference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from aggregator.store import Store
from aggregator.web import create_app
from edge_client.export import quantized_graph
from edge_client.export.int8_reference import run_int8
from edge_client.shared.protocol import Model, decode
from fedge.datasets import load_digits
from tests.integration.sine_windows import sine_windows

pytestmark = pytest.mark.integration

FEDGE = [sys.executable, "-m", "fedge.cli"]


def _fedge(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([*FEDGE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run_all(procs: list[subprocess.Popen], timeout: float = 90) -> list[tuple[str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:  # only ours, and only if a timeout left them running
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0] * len(procs), [o[1][-2000:] for o in outputs]
    return outputs


def _device_toml(path: Path, device: str, federation: str, port: int, model: str,
                 data: Path) -> Path:
    path.write_text(f'device_id = "{device}"\nfederation = "{federation}"\nport = {port}\n'
                    f'state_dir = "{path.parent / (device + "-state")}"\n{model}\n'
                    f'[data]\npath = "{data}"\n[eligibility]\nenabled = false\n')
    return path


def _epsilon(z: float, versions: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()  # q = 1: every device is in every round
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(1.0, dp_event.GaussianDpEvent(z)), versions))
    return accountant.get_epsilon(delta)


MLP = "[model]\nsizes = [64, 16, 10]\n"


def test_secagg_with_distributed_dp_from_toml(mosquitto, tmp_path):
    x, y = load_digits()
    devices = []
    for i in range(3):
        np.savez(tmp_path / f"data{i}.npz", x=x[i:1500:3], y=y[i:1500:3])
        devices.append(_device_toml(tmp_path / f"dev{i}.toml", f"dev-{i}", "sa",
                                    mosquitto.port, MLP, tmp_path / f"data{i}.npz"))
    np.savez(tmp_path / "heldout.npz", x=x[1500:], y=y[1500:])
    db = tmp_path / "agg.sqlite3"
    (tmp_path / "agg.toml").write_text(
        f'federation = "sa"\nport = {mosquitto.port}\nrounds = 3\ndb_path = "{db}"\n{MLP}'
        '[train]\nepochs = 2\nlr = 0.1\nmomentum = 0.5\n'
        '[sync]\ntarget_updates = 3\nmin_fraction = 1.0\nround_timeout_s = 60\n'
        '[secagg]\nenabled = true\nclip = 2.0\nphase_timeout_s = 20\n'
        '[privacy]\nmode = "distributed"\nclip = 1.0\nnoise_multiplier = 0.1\n'
        '[anomalies]\nwindow = 4\nthreshold = 2\nclip_factor = 5.0\n'
        f'[evaluation]\ndata = "{tmp_path / "heldout.npz"}"\n')
    procs = [_fedge("aggregator", "serve", "--exit-when-done", "--config", tmp_path / "agg.toml")]
    procs += [_fedge("device", "--config", d) for d in devices]
    outputs = _run_all(procs)
    assert "federation 'sa', sync mode" in outputs[0][1]

    store = Store(db)
    history = store.model_history()
    assert [h.version for h in history] == [0, 1, 2, 3]
    assert store.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 0  # masked only
    rows = store.db.execute("SELECT state FROM secagg_rounds").fetchall()
    store.close()
    assert [r[0] for r in rows] == ["done"] * 3
    for h in history[1:]:
        assert h.secagg["contributors"] == 3 and h.secagg["dropped"] == 0
        assert h.metric("dp_mode") == "distributed" and h.metric("dp_clip") == 1.0
        assert h.epsilon == pytest.approx(_epsilon(0.1, h.version, 1e-5), rel=1e-9)
    assert history[-1].accuracy > 0.4  # 10 classes; 0.67-0.69 in three runs

    api = create_app(db, None, None).test_client()
    overview = api.get("/api/overview").get_json()
    assert overview["privacy"]["mode"] == "distributed"
    assert overview["privacy"]["epsilon"] == pytest.approx(history[-1].epsilon)
    anomalies = api.get("/api/anomalies").get_json()
    assert (anomalies["window"], anomalies["threshold"], anomalies["clip_factor"]) == (4, 2, 5.0)
    assert not any(d["flagged"] for d in anomalies["devices"])


CNN = """[model]
kind = "sequential"
input_shape = [32, 2]
qat = true
layers = [
  {type = "conv1d", filters = 4, kernel = 5, stride = 2}, {type = "relu"},
  {type = "maxpool1d", size = 2}, {type = "flatten"}, {type = "dense", units = 2},
]
"""


def test_qat_sequential_federation_then_export_int8_tflite_runs_in_litert(mosquitto, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    devices = []
    for i in range(2):
        x, y = sine_windows(300, seed=i)
        np.savez(tmp_path / f"data{i}.npz", x=x, y=y)
        devices.append(_device_toml(tmp_path / f"dev{i}.toml", f"dev-{i}", "qat",
                                    mosquitto.port, CNN, tmp_path / f"data{i}.npz"))
    db = tmp_path / "agg.sqlite3"
    (tmp_path / "agg.toml").write_text(
        f'federation = "qat"\nport = {mosquitto.port}\nrounds = 2\ndb_path = "{db}"\n{CNN}'
        '[train]\nepochs = 2\nlr = 0.05\nmomentum = 0.5\n[sync]\ntarget_updates = 2\n')
    procs = [_fedge("aggregator", "serve", "--exit-when-done", "--config", tmp_path / "agg.toml")]
    procs += [_fedge("device", "--config", d) for d in devices]
    _run_all(procs)

    out = tmp_path / "model.tflite"
    done = subprocess.run([*FEDGE, "export", "--config", str(tmp_path / "agg.toml"),
                           "--int8", "--format", "tflite", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: tflite int8 (ranges from qat), model version 2" in done.stdout

    store = Store(db)
    latest = decode(store.latest_model().blob, expect=Model)
    store.close()
    graph = quantized_graph(latest.arch, latest.tensors)
    x_test, y_test = sine_windows(200, seed=9)
    x_q = graph.input.quantize(x_test)

    interpreter = Interpreter(model_content=out.read_bytes())
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8  # full-integer, for MCUs
    assert inp["quantization"] == pytest.approx((graph.input.scale, graph.input.zero_point))
    interpreter.resize_tensor_input(inp["index"], x_q.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x_q)
    interpreter.invoke()
    logits = interpreter.get_tensor(outp["index"])
    reference = run_int8(graph, x_q)
    assert np.abs(logits.astype(int) - reference.astype(int)).max() <= 1
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99
    assert (logits.argmax(1) == y_test).mean() > 0.8  # what the federation learned, in int8
