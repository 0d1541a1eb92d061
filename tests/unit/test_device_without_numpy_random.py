"""A device on the demo's configuration never loads numpy.random (6.7 MB of RSS, loaded by
numpy 2 only when something touches it): its shuffle and stochastic rounding come from
PortableRandom, its initial weights are drawn only if read before the aggregator's
arrive (benchmarks/footprint.py, docs/raspberry-pi.md "Footprint")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_client.shared.codecs import CodecConfig, encode_vector
from edge_client.shared.protocol.seeds import delta_seed
from edge_client.training import mlp_trainer

ROOT = Path(__file__).resolve().parents[2]
SIZES = [16, 12, 4]
DOWNLINK = CodecConfig(quantize="q8")

# In a fresh interpreter: `fedge device`'s start (its imports, the TOML read, the data
# loaded and checked against the [model], the EdgeClient built; never connected), then
# one whole round (model held, task with the demo's topk 1% q4 uplink, fit, update
# encoded and stored) and the decoding of a q8 model delta.
ROUND = """
import sys
from pathlib import Path
import numpy as np
import fedge.cli, fedge.roles
assert "numpy.random" not in sys.modules, "loaded by the device's imports"
from edge_client.device_state import DeviceState
from edge_client.shared.codecs import CodecConfig, decode_dense
from edge_client.shared.protocol import Model, Task, TrainConfig, Update, decode, encode
from edge_client.shared.protocol.seeds import delta_seed

folder = Path(sys.argv[1])
given = np.load(folder / "given.npz")
weights = {k[2:]: given[k] for k in given.files if k.startswith("w:")}
DeviceState(folder / "state", "dev-0", 10**7).save_model(
    encode(Model(version=0, tensors=weights, arch={})), 0)
client = fedge.roles.build_device_run(folder / "device.toml").client
assert "numpy.random" not in sys.modules, "loaded by the device's start"
assert client.model_version == 0
codec = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4").to_wire()
task = Task(task_id="r1", mode="sync", round=1, model_version=0, invited=("dev-0",),
            train=TrainConfig(epochs=2, batch_size=8), codec=codec)
client.receive(client.topics.task, encode(task))
[entry] = client.outbox.entries()
assert decode(entry.payload, expect=Update).blob
delta = decode_dense(given["delta"].tobytes(), CodecConfig(quantize="q8"),
                     int(given["n"]), delta_seed(1))
assert delta.shape == (int(given["n"]),)
print("numpy.random" in sys.modules)
"""
DEVICE_TOML = f"""device_id = "dev-0"
federation = "plain"
host = "127.0.0.1"
port = 1
state_dir = "state"
[model]
sizes = {SIZES!r}
[data]
path = "data.npz"
[eligibility]
enabled = false
"""


def test_a_demo_device_round_loads_no_numpy_random(tmp_path):
    weights = mlp_trainer(SIZES, seed=0).get_weights()
    n = sum(w.size for w in weights.values())
    rng = np.random.default_rng(0)
    delta = encode_vector(rng.normal(size=n).astype(np.float32), DOWNLINK, delta_seed(1), rng)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(40, SIZES[0])).astype(np.float32),
             y=rng.integers(0, SIZES[-1], 40))
    np.savez(tmp_path / "given.npz", n=n, delta=np.frombuffer(delta.blob, dtype=np.uint8),
             **{f"w:{name}": w for name, w in weights.items()})
    (tmp_path / "device.toml").write_text(DEVICE_TOML)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", ROUND, str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False", "numpy.random was loaded by the round"


def test_a_fresh_model_still_draws_its_initial_weights_when_read():
    """The draw is deferred, not dropped: reading a new model's weights gives the seed's."""
    a, b = mlp_trainer(SIZES, seed=3), mlp_trainer(SIZES, seed=3)
    x = np.ones((2, SIZES[0]), np.float32)
    np.testing.assert_array_equal(a.model.forward(x), b.model.forward(x))
    first, second = a.get_weights(), b.get_weights()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert np.abs(first["dense0.weight"]).sum() > 0
    rng = np.random.default_rng(3)
    expected = (rng.standard_normal((SIZES[0], SIZES[1])) * np.sqrt(2.0 / SIZES[0]))
    np.testing.assert_array_equal(first["dense0.weight"], expected.astype(np.float32))


def test_weights_set_before_any_read_replace_the_draw():
    trainer = mlp_trainer(SIZES, seed=3)
    given = {k: np.full_like(v, 0.5) for k, v in mlp_trainer(SIZES, seed=9).get_weights().items()}
    trainer.set_weights(given)
    assert trainer.model._draw_weights is None
    assert all(np.array_equal(v, given[k]) for k, v in trainer.get_weights().items())


def test_checking_a_sample_against_a_fresh_model_draws_nothing():
    """`fedge device` checks its data fits the [model] before any weights arrive."""
    trainer = mlp_trainer(SIZES, seed=3)
    assert trainer.model.output_shape(np.zeros((2, SIZES[0]), np.float32)) == (2, SIZES[-1])
    assert trainer.model._draw_weights is not None
    np.testing.assert_array_equal(trainer.get_weights()["dense0.weight"],
                                  mlp_trainer(SIZES, seed=3).get_weights()["dense0.weight"])
