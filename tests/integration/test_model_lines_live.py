"""Models that change shape, through the real mosquitto path (issue 18): a new
architecture rolled out as a new model line; a device that can run it takes it and
trains on it, one whose max_model_bytes it passes and one whose trainer cannot take it
refuse it with their reason in the status, and keep serving the old line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.model_lines import LinesConfig, line_of, lines_view
from aggregator.service import Aggregator
from aggregator.store import Store
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.predictor import Predictor
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer
from fedge.federation import PartyThread
from tests.integration.fleet import Digits, wait_until

pytestmark = pytest.mark.integration
FED = "lines"
OLD = {"kind": "mlp", "sizes": [64, 16, 10]}
NEW = {"kind": "mlp", "sizes": [64, 32, 10]}


class OneShape:
    """A trainer that runs one architecture only: no `adopt`."""

    def __init__(self, sizes: list[int], seed: int) -> None:
        self.inner = mlp_trainer(sizes, seed)

    def __getattr__(self, name: str):
        if name == "adopt":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _aggregator(tmp_path, port: int, arch: dict, rounds: int, target: int) -> Aggregator:
    config = AggregatorConfig(
        federation=FED, db_path=tmp_path / "agg.sqlite3", port=port, rounds=rounds,
        train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
        sync=SyncConfig(target_updates=target, min_fraction=1.0, round_timeout_s=3,
                        deadline_growth=1.0, wait_for_devices_s=0.5),
        lines=LinesConfig(on_arch_change="new_line"))
    return Aggregator(config, mlp_trainer(arch["sizes"], 0).get_weights(), arch)


def _run(aggregator: Aggregator) -> PartyThread:
    return PartyThread(lambda stop: aggregator.run(stop, exit_when_done=False), "aggregator")


def _stop(parties: list[PartyThread]) -> None:
    for party in parties:
        party.stop.set()
    for party in parties:
        party.join(30)


def test_a_new_line_is_taken_by_who_can_run_it_and_refused_by_the_rest(tmp_path, mosquitto,
                                                                       caplog):
    caplog.set_level(logging.INFO)
    digits = Digits(devices=3)
    predictors = [Predictor() for _ in range(3)]
    limits = [64 * 2**20, 7000, 64 * 2**20]  # d1: the new line's model is over 7000 bytes
    trainers = [mlp_trainer(OLD["sizes"], 1), mlp_trainer(OLD["sizes"], 2),
                OneShape(OLD["sizes"], 3)]
    clients = [EdgeClient(ClientConfig(device_id=f"d{i}", federation=FED, port=mosquitto.port,
                                       state_dir=tmp_path / f"d{i}", exit_when_done=False,
                                       max_model_bytes=limits[i], eligibility_check_s=0.1,
                                       eligibility=EligibilityConfig(enabled=False)),
                          trainers[i], x, y, predictor=predictors[i])
               for i, (x, y) in enumerate(digits.shards)]
    devices = [PartyThread(c.run, c.config.device_id) for c in clients]
    first = _aggregator(tmp_path, mosquitto.port, OLD, rounds=1, target=3)
    party = _run(first)
    try:
        wait_until(lambda: first.snapshot.finished and all(p.version == 1 for p in predictors),
                   60, "line 1's version 1 on every device")
        _stop([party])
        second = _aggregator(tmp_path, mosquitto.port, NEW, rounds=3, target=1)
        assert second.version == 2 and second.core.state.arch == NEW  # the new line
        party = _run(second)
        wait_until(lambda: second.version == 3, 60, "a version of the new line trained")
        wait_until(lambda: predictors[0].version == 3, 30, "d0 serving it")
        second.core.write_soft_state()
    finally:
        _stop([party, *devices])
    store = Store(tmp_path / "agg.sqlite3")
    try:
        view = lines_view(store)
        [used] = [h.devices for h in store.model_history() if h.version == 3]
    finally:
        store.close()
    assert used == ("d0",)
    assert [(r["line"], r["devices"]) for r in view["lines"]] == [
        (line_of(NEW), ["d0"]), (line_of(OLD), ["d1", "d2"])]
    refused = {d["device_id"]: d["refused"] for d in view["devices"]}
    assert refused["d0"] is None
    assert "over max_model_bytes 7000; serving version 1" in refused["d1"]
    assert "it does not fit this device's trainer" in refused["d2"]
    assert refused["d2"].endswith("serving version 1")
    assert predictors[1].version == predictors[2].version == 1  # the old line, still served
    x = digits.shards[1][0][:5]
    assert predictors[1].predict(x).shape == (5,)
    assert f"starting model line {line_of(NEW)} at version 2" in caplog.text
    np.testing.assert_array_equal(trainers[0].get_weights()["dense0.weight"].shape, (64, 32))
