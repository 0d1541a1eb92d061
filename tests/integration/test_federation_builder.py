"""fedge.federation.Federation through the real mosquitto path: small and fast."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from edge_client.client import ClientConfig
from edge_client.device_io import TrainerFailed
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import TrainConfig
from edge_client.training import FitResult, mlp_trainer
from fedge.broker import find_mosquitto
from fedge.federation import Federation, PartyFailed
from tests.integration.fleet import Digits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(devices=3)


def _config(tmp_path, rounds: int = 2, round_timeout_s: float = 30) -> AggregatorConfig:
    return AggregatorConfig(federation="builder", db_path=tmp_path / "agg.sqlite3",
                            rounds=rounds, train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                            sync=SyncConfig(target_updates=3, round_timeout_s=round_timeout_s))


def _device(tmp_path, i: int) -> ClientConfig:
    return ClientConfig(device_id=f"d{i}", federation="builder", state_dir=tmp_path / f"d{i}",
                        eligibility=EligibilityConfig(enabled=False))


class Broken:
    """A trainer whose fit fails: its device's thread raises."""

    def __init__(self, sizes: list[int]) -> None:
        self.inner = mlp_trainer(sizes)

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.inner.get_weights()

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.inner.set_weights(weights)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return self.inner.evaluate(x, y)

    def fit(self, x, y, config: TrainConfig, should_stop=None) -> FitResult:
        raise MemoryError("the device ran out of memory")


def test_a_federation_runs_to_the_end_and_reports(tmp_path, digits):
    assert find_mosquitto() is not None, "mosquitto not found: apt-get install mosquitto"
    with Federation("mosquitto") as federation:
        broker = federation.broker
        aggregator = federation.add_aggregator(
            _config(tmp_path), digits.initial_weights(), {"kind": "mlp", "sizes": digits.sizes},
            evaluate=lambda w: {"accuracy": digits.accuracy(w)})
        assert aggregator.config.port == broker.port  # the federation's broker, whatever given
        for i, (x, y) in enumerate(digits.shards):
            device = federation.add_device(_device(tmp_path, i), mlp_trainer(digits.sizes, i),
                                           x, y)
            assert (device.config.host, device.config.port) == (broker.host, broker.port)
        result = federation.run(timeout_s=60)
        assert all(not p.alive for p in federation.parties)
    assert broker.pid is None  # started by the federation, stopped with it
    assert result.version == 2 and [h["version"] for h in result.history] == [1, 2]
    assert [h["updates"] for h in result.history] == [3, 3]
    assert result.final_accuracy == digits.accuracy(result.global_weights) > 0.3
    assert set(result.device_stats) == {"d0", "d1", "d2"}
    assert result.bytes_up == sum(s.bytes_up for s in result.device_stats.values()) > 0
    assert result.bytes_down > 0 and result.parameters == sum(
        w.size for w in digits.initial_weights().values())


def test_the_first_failing_party_stops_the_rest(mosquitto, tmp_path, digits):
    with Federation(mosquitto) as federation:
        federation.add_aggregator(_config(tmp_path), digits.initial_weights(),
                                  {"kind": "mlp", "sizes": digits.sizes})
        for i, (x, y) in enumerate(digits.shards):
            trainer = Broken(digits.sizes) if i == 1 else mlp_trainer(digits.sizes, i)
            federation.add_device(_device(tmp_path, i), trainer, x, y)
        with pytest.raises(PartyFailed, match=r"d1 failed: TrainerFailed.*MemoryError") as failed:
            federation.run(timeout_s=60)
        assert isinstance(failed.value.error, TrainerFailed)
        assert isinstance(failed.value.error.__cause__, MemoryError)
        assert all(not p.alive for p in federation.parties)
    assert mosquitto.pid is not None  # a broker handed in is left running


def test_a_federation_that_does_not_finish_times_out(mosquitto, tmp_path, digits):
    with Federation(mosquitto) as federation:  # no devices: the round never fills
        federation.add_aggregator(_config(tmp_path), digits.initial_weights(),
                                  {"kind": "mlp", "sizes": digits.sizes})
        with pytest.raises(TimeoutError, match="did not finish within 1 s"):
            federation.run(timeout_s=1)
        assert all(not p.alive for p in federation.parties)


def test_a_restarted_aggregator_resumes_from_its_store(mosquitto, tmp_path, digits):
    with Federation(mosquitto) as federation:
        # a round open at the restart may wait for its deadline: a short one
        first = federation.add_aggregator(_config(tmp_path, rounds=3, round_timeout_s=2),
                                          digits.initial_weights(),
                                          {"kind": "mlp", "sizes": digits.sizes})
        for i, (x, y) in enumerate(digits.shards):
            federation.add_device(_device(tmp_path, i), mlp_trainer(digits.sizes, i), x, y)
        federation.start()
        deadline = time.monotonic() + 30
        while first.version < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        again = federation.restart_aggregator()
        assert again is federation.aggregator and again is not first
        assert again.version >= 1  # from the store, not from scratch
        federation.wait(timeout_s=60)
        assert federation.result().version == 3


def test_the_snippet_in_docs_federation_runs(tmp_path):
    """docs/federation.md's example, as a reader would paste it into a file."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "federation.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"3 versions, accuracy 0\.\d{3}, \d+ bytes up, \d+ bytes down\n",
                        done.stdout)
