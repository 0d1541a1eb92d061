"""Local data larger than memory: memory-mapped arrays are checked and trained on a block
or a batch at a time, never loaded whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_client import local_data
from edge_client.local_data import checked_local_data
from edge_client.shared.settings import ConfigError
from edge_client.training import TrainConfig, mlp_trainer
from fedge.roles import DataSpec, build_device

ROOT = Path(__file__).resolve().parents[2]


def saved(folder: Path, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return (np.load(folder / "x.npy", mmap_mode="r"), np.load(folder / "y.npy", mmap_mode="r"))


def data(n: int = 200, features: int = 8, dtype: type = np.float32) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, features)).astype(dtype), rng.integers(0, 3, n)


def test_a_memmap_is_checked_but_not_copied(tmp_path: Path) -> None:
    x_map, y_map = saved(tmp_path, *data())
    x, y = checked_local_data(x_map, y_map)
    assert np.shares_memory(x, x_map) and np.shares_memory(y, y_map)
    x_mem, y_mem = checked_local_data(np.array(x_map), np.array(y_map))
    assert not np.shares_memory(x_mem, x_map)  # in memory: converted as before
    assert x_mem.dtype == np.float32 and y_mem.dtype == np.int64


def test_bad_rows_are_found_in_every_block(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_data, "_BLOCK_BYTES", 64)  # two rows of 8 float32 a block
    x, y = data(dtype=np.float64)
    x[150, 3], x[171, 0] = np.nan, 1e300  # 1e300 is infinite as float32
    x_map, y_map = saved(tmp_path, x, y)
    with pytest.raises(ValueError, match=r"in 2 of 200 samples \(first: sample 150\)"):
        checked_local_data(x_map, y_map)
    y_float = y.astype(np.float64)
    y_float[197] = 0.5
    x_map, y_map = saved(tmp_path, data()[0], y_float)
    with pytest.raises(ValueError, match=r"y\[197\] is 0.5"):
        checked_local_data(x_map, y_map)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_on_a_memmap_matches_training_in_memory(tmp_path: Path, dtype: type) -> None:
    x, y = data(dtype=dtype)
    x_map, y_map = saved(tmp_path, x, y.astype(np.int32))
    fit = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.5, seed=3)
    results = []
    for xs, ys in ((x, y), (x_map, y_map)):
        trainer = mlp_trainer([8, 16, 3], seed=1)
        trainer.fit(*checked_local_data(xs, ys), fit)
        results.append((trainer.get_weights(), trainer.evaluate(xs, ys)))
    (in_memory, scores), (mapped, mapped_scores) = results
    assert scores == mapped_scores
    for name in in_memory:
        np.testing.assert_array_equal(in_memory[name], mapped[name])


def test_a_device_config_names_npy_files(tmp_path: Path) -> None:
    x, y = data(features=64)
    saved(tmp_path, x, y)
    config = tmp_path / "device.toml"
    config.write_text(f'device_id = "d"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[model]\nsizes = [64, 4, 3]\n'
                      f'[data]\nx = "{tmp_path / "x.npy"}"\ny = "{tmp_path / "y.npy"}"\n')
    client = build_device(config)
    assert local_data.is_mapped(client.x) and not client.x.flags.owndata  # not loaded
    np.testing.assert_array_equal(client.x, x)


@pytest.mark.parametrize("table, message", [
    ({"x": "x.npy"}, "give both"),
    ({"x": "x.npy", "y": "y.npy", "path": "d.npz"}, "not both"),
    ({"x": "d.npz", "y": "y.npy"}, "not an .npz archive"),
    ({"x": "missing.npy", "y": "y.npy"}, r"\[data\] x .*missing.npy: need an .npy file"),
])
def test_bad_npy_tables_are_config_errors(tmp_path: Path, table: dict, message: str) -> None:
    saved(tmp_path, *data())
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8)), y=np.zeros(2))
    spec = DataSpec(**{key: tmp_path / value for key, value in table.items()})
    with pytest.raises(ConfigError, match=message):
        spec.load()


# Runs in a fresh interpreter: trains on argv[1] (x.npy) and argv[2] (y.npy) memory-mapped,
# sampling the process's anonymous memory (RssAnon: what the kernel cannot just drop, unlike
# the file's pages) every few milliseconds, and prints the growth over the start in MB.
TRAIN_ON_MEMMAP = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    from edge_client.local_data import checked_local_data
    from edge_client.training import TrainConfig, mlp_trainer

    def anon_mb():
        with open("/proc/self/status") as f:
            kb = next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))
        return kb / 1024

    x_file, y_file = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
    trainer = mlp_trainer([x_file.shape[1], 8, 4])
    start, peak, done = anon_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    x, y = checked_local_data(x_file, y_file)
    trainer.evaluate(x, y)
    trainer.fit(x, y, TrainConfig(epochs=1, batch_size=32, lr=0.01))
    done.set()
    sampler.join()
    print(max(peak[0], anon_mb()) - start)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_training_on_a_memmap_far_larger_than_the_memory_it_uses(tmp_path: Path) -> None:
    rows, features = 12_800, 4096  # 200 MB of float32
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, features))
    block = np.random.default_rng(0).standard_normal((256, features)).astype(np.float32)
    for begin in range(0, rows, len(block)):
        x[begin : begin + len(block)] = block
    x.flush()
    del x
    np.save(tmp_path / "y.npy", np.arange(rows) % 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", TRAIN_ON_MEMMAP, str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    growth_mb = float(done.stdout.split()[-1])
    assert growth_mb < 25, f"anonymous memory grew {growth_mb:.1f} MB training on 200 MB"
