"""Staged rollout through a real mosquitto (docs/lifecycle.md): canary devices evaluate
each candidate on held-out data; a bad one is rolled back with no device serving it, a
good one is promoted, an operator rolls back from the CLI, and an aggregator restarted
mid-canary reaches the decision it would have reached."""

from __future__ import annotations

import dataclasses
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from aggregator.config import SyncConfig
from aggregator.lifecycle import RolloutConfig, Stage
from aggregator.service import Aggregator
from aggregator.store import Store
from edge_client.client import EdgeClient
from edge_client.predictor import Predictor
from edge_client.shared.protocol import Model, decode
from edge_client.training import mlp_trainer
from fedge.federation import PartyThread
from fedge.rollout_demo import corrupt_nth_candidate, split_holdout
from tests.integration.fedge_process import run_fedge
from tests.integration.fleet import (
    Digits,
    aggregator_config,
    client_config,
    wait_until,
)

pytestmark = pytest.mark.integration

DEVICES = 4
RULES = RolloutConfig(canary_fraction=0.5, min_canary_reports=2, margin=0.1,
                      canary_timeout_s=45)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(DEVICES)


class Served:
    """What each device's app was handed to serve, in order (its on_model)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_device: dict[str, list[int]] = defaultdict(list)

    def hook(self, device: str):
        def on_model(version: int, arch: dict, weights: dict) -> None:
            with self.lock:
                self.by_device[device].append(version)
        return on_model

    def ever(self, version: int) -> list[str]:
        with self.lock:
            return sorted(d for d, vs in self.by_device.items() if version in vs)

    def now(self) -> dict[str, int]:
        with self.lock:
            return {d: vs[-1] for d, vs in self.by_device.items() if vs}


def _aggregator(broker, workdir: Path, data: Digits, rounds: int, on_version=None,
                bad: int | None = None) -> Aggregator:
    config = dataclasses.replace(
        aggregator_config(workdir, data, rounds=rounds, rollout=RULES,
                          sync=SyncConfig(target_updates=DEVICES, round_timeout_s=30)),
        host=broker.host, port=broker.port)
    aggregator = Aggregator(config, initial_weights=data.initial_weights(),
                            arch={"kind": "mlp", "sizes": data.sizes}, on_version=on_version)
    if bad is not None:
        aggregator.core.versions.tamper = corrupt_nth_candidate(bad)
    return aggregator


def _devices(broker, workdir: Path, data: Digits, served: Served,
             exit_when_done: bool = True, predictor: Predictor | None = None
             ) -> list[EdgeClient]:
    """The devices; the first also serves through `predictor`, as an app would."""
    out = []
    for i, (x, y) in enumerate(data.shards):
        train_x, train_y, holdout = split_holdout(x, y)
        config = dataclasses.replace(client_config(workdir, i, exit_when_done=exit_when_done),
                                     host=broker.host, port=broker.port)
        record = served.hook(config.device_id)

        def on_model(version, arch, weights, record=record, first=(i == 0)):
            record(version, arch, weights)
            if first and predictor is not None:
                predictor.load(version, arch, weights)
        out.append(EdgeClient(config, mlp_trainer(data.sizes, seed=i), train_x, train_y,
                              on_model=on_model, holdout=holdout))
    return out


def _run(aggregator: Aggregator, devices: list[EdgeClient], timeout: float = 90,
         serve_on: bool = False) -> list[PartyThread]:
    parties = [PartyThread(lambda stop: aggregator.run(stop, exit_when_done=not serve_on),
                           "aggregator")]
    parties += [PartyThread(d.run, d.config.device_id) for d in devices]
    if not serve_on:
        for party in parties:
            party.join(timeout)
    return parties


def _stages(path: Path) -> tuple[dict[int, Stage], list, dict[int, int]]:
    store = Store(path)
    try:
        copies = {r.version: r.metric("copy_of") for r in store.model_history()
                  if r.metric("copy_of") is not None}
        return store.stages(), store.stage_audit(), copies
    finally:
        store.close()


def _weights(aggregator: Aggregator, version: int) -> dict:
    store = Store(aggregator.config.db_path)
    try:
        model = decode(store.model_blob(version), expect=Model)
    finally:
        store.close()
    return dict(model.tensors)


def _canaries(path: Path, version: int) -> list[str]:
    store = Store(path)
    try:
        return sorted(r["device_id"] for r in store.canary_reports(version))
    finally:
        store.close()


def test_a_bad_candidate_is_rolled_back_and_no_device_serves_it(mosquitto, tmp_path, digits):
    served, predictor = Served(), Predictor()
    aggregator = _aggregator(mosquitto, tmp_path, digits, rounds=3, bad=2)
    _run(aggregator, _devices(mosquitto, tmp_path, digits, served, predictor=predictor))
    stages, audit, copies = _stages(aggregator.config.db_path)
    assert stages[1] is Stage.RETIRED and stages[2] is Stage.ROLLED_BACK
    assert copies == {3: 1} and stages[3] is Stage.PRODUCTION
    [why] = [c.reason for c in audit if c.version == 2 and c.after is Stage.ROLLED_BACK]
    assert "worse than production" in why
    assert len(_canaries(aggregator.config.db_path, 2)) == 2  # caught by its canaries
    assert served.ever(2) == []  # no device, canary or not, ever served it
    assert served.now() == {f"dev-{i}": 3 for i in range(DEVICES)}
    assert predictor.version == 3  # the app's Predictor serves the copy of version 1
    accuracy = (predictor.predict(digits.x_test) == digits.y_test).mean()
    assert accuracy == pytest.approx(digits.accuracy(_weights(aggregator, 1)), abs=1e-6)


def test_a_good_candidate_is_promoted(mosquitto, tmp_path, digits):
    served = Served()
    aggregator = _aggregator(mosquitto, tmp_path, digits, rounds=2)
    _run(aggregator, _devices(mosquitto, tmp_path, digits, served))
    stages, audit, copies = _stages(aggregator.config.db_path)
    assert copies == {} and stages == {0: Stage.RETIRED, 1: Stage.RETIRED,
                                       2: Stage.PRODUCTION}
    promoted = [c for c in audit if c.after is Stage.PRODUCTION and c.actor == "rule"]
    assert [c.version for c in promoted] == [1, 2]
    assert all("within the margin" in c.reason for c in promoted)
    assert served.now() == {f"dev-{i}": 2 for i in range(DEVICES)}


def test_an_operator_rolls_back_from_the_cli(mosquitto, tmp_path, digits):
    served = Served()
    aggregator = _aggregator(mosquitto, tmp_path, digits, rounds=2)
    parties = _run(aggregator, _devices(mosquitto, tmp_path, digits, served,
                                        exit_when_done=False), serve_on=True)
    try:
        wait_until(lambda: set(served.now().values()) == {2} and len(served.now()) == DEVICES,
                   90, "every device serving version 2")
        config = tmp_path / "aggregator.toml"
        config.write_text(f'federation = "test"\ndb_path = "{aggregator.config.db_path}"\n')
        done = run_fedge("aggregator", "rollback", "--to", "1", "--config", str(config),
                         timeout=60)
        assert done.returncode == 0, done.stderr
        assert "requested rollback 1" in done.stdout
        wait_until(lambda: set(served.now().values()) == {3} and len(served.now()) == DEVICES,
                   30, "every device serving the copy of version 1")
    finally:
        for party in parties:
            party.halt()
    stages, audit, copies = _stages(aggregator.config.db_path)
    assert stages[2] is Stage.ROLLED_BACK and stages[3] is Stage.PRODUCTION
    assert copies == {3: 1}
    actors = {c.actor for c in audit if c.version in (2, 3) and c.after in (
        Stage.ROLLED_BACK, Stage.PRODUCTION) and c.actor.startswith("operator:")}
    assert actors and all(a.startswith("operator:cli:") for a in actors)


def test_a_restart_mid_canary_resumes_the_same_decision(mosquitto, tmp_path, digits,
                                                        caplog):
    """The aggregator stops as soon as the (bad) candidate is made, before the canaries'
    reports can be taken; the restarted one resumes the canary from the store, the
    devices send their reports again when the Rollout comes again, and it is rolled
    back as an uninterrupted run would have."""
    served = Served()
    first: list[Aggregator] = []
    first.append(_aggregator(mosquitto, tmp_path, digits, rounds=2, bad=2,
                             on_version=lambda r: r.version == 2 and first[0].stop()))
    devices = _devices(mosquitto, tmp_path, digits, served)
    device_parties = [PartyThread(d.run, d.config.device_id) for d in devices]
    PartyThread(lambda stop: first[0].run(stop), "aggregator").join(60)
    stages, _, _ = _stages(first[0].config.db_path)
    assert stages[2] is Stage.CANARY  # stopped mid-canary
    with caplog.at_level("INFO", "aggregator.service"):
        again = _aggregator(mosquitto, tmp_path, digits, rounds=2)
        assert "resuming the canary of version 2" in caplog.text
        PartyThread(lambda stop: again.run(stop), "aggregator").join(90)
    for party in device_parties:
        party.join(60)
    stages, _, copies = _stages(again.config.db_path)
    assert stages[2] is Stage.ROLLED_BACK and copies == {3: 1}
    assert stages[3] is Stage.PRODUCTION
    assert len(_canaries(again.config.db_path, 2)) == 2
    assert served.ever(2) == []
    assert served.now() == {f"dev-{i}": 3 for i in range(DEVICES)}
