"""Through a real mosquitto: a device that was offline for 3 versions rejoins and rebuilds
the newest model from the retained delta chain, bit for bit, after the aggregator
restarted and republished the chain from its store."""

from __future__ import annotations

import time

import pytest

from aggregator.config import AsyncConfig
from aggregator.store import Store
from edge_client.shared.protocol import Model, encode
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.training import mlp_trainer
from tests.integration.fleet import (
    FEDERATION,
    Digits,
    Running,
    make_aggregator,
    make_client,
    wait_until,
)
from tests.mqtt_helpers import close_client, paho_client, subscribe

pytestmark = pytest.mark.integration

SIZES = [64, 256, 10]  # bigger than fleet's MLP: a delta's chunk overhead stays small
ARCH = {"kind": "mlp", "sizes": SIZES}


def _aggregator(broker, tmp_path, data: Digits, rounds: int, **overrides):
    return make_aggregator(broker, tmp_path, data, initial=mlp_trainer(SIZES, seed=0).get_weights(),
                           arch=ARCH, mode="async", rounds=rounds,
                           async_=AsyncConfig(buffer_size=1), **overrides)


def _device(broker, tmp_path, data: Digits, index: int, seen: dict | None = None,
            exit_when_done: bool = True):
    def keep(version: int, arch: dict, weights: dict) -> None:
        if seen is not None:
            seen[version] = sha256_hex(encode(Model(version=version, tensors=weights,
                                                    arch=arch)))

    device = make_client(broker, tmp_path, data, index, trainer=mlp_trainer(SIZES, seed=index),
                         exit_when_done=exit_when_done)
    device.on_model = keep
    return device


def _run(parts: list[tuple[object, str]], timeout: float = 60) -> None:
    """Each part's run() on a thread; every one returns by itself (done task, rounds)."""
    runs = [Running(part.run, name) for part, name in parts]
    for run in runs:
        run.join(timeout)


def _delta_topic(version: int) -> str:
    return f"fedge/{FEDERATION}/model/{version}/d/0"  # each delta here fits one chunk


def _clear_retained_deltas(broker, versions: range) -> None:
    """Wipe the delta chunks from the broker, as a broker that lost its retained store."""
    client = paho_client(broker.host, broker.port, "wiper")
    try:
        for version in versions:
            client.publish(_delta_topic(version), b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        close_client(client)


def _retained_deltas(broker, versions: range) -> set[int]:
    """The versions whose delta chunk the broker holds now (retained, not empty)."""
    client = paho_client(broker.host, broker.port, "looker")
    inbox = subscribe(client, f"fedge/{FEDERATION}/model/+/d/0")
    time.sleep(0.3)  # retained messages come right after the SUBACK
    close_client(client)
    topics = {m.topic for m in inbox.drain() if m.retain and m.payload}
    return {v for v in versions if _delta_topic(v) in topics}


def test_a_device_offline_for_three_versions_rebuilds_the_newest_from_the_chain(
        mosquitto, tmp_path):
    data = Digits(devices=2)
    # dev-1 takes part in version 1, then goes offline.
    _run([(_aggregator(mosquitto, tmp_path, data, rounds=1), "aggregator"),
          (_device(mosquitto, tmp_path, data, 1), "dev-1")])
    # A restarted aggregator makes versions 2, 3 and 4 with dev-0 alone (which must not
    # leave on the done task of version 1 still retained).
    dev0 = Running(_device(mosquitto, tmp_path, data, 0, exit_when_done=False).run, "dev-0")
    _run([(_aggregator(mosquitto, tmp_path, data, rounds=4), "aggregator")])
    dev0.halt()
    _clear_retained_deltas(mosquitto, range(1, 5))

    # Restarted again (paused: no new versions), it republishes the chain on connect.
    agg = _aggregator(mosquitto, tmp_path, data, rounds=0)
    agg.set_training(False)
    seen: dict[int, str] = {}
    device = _device(mosquitto, tmp_path, data, 1, seen)  # holds version 1 on disk
    assert _retained_deltas(mosquitto, range(1, 5)) == set()
    serving = Running(agg.run, "aggregator")
    try:
        wait_until(lambda: _retained_deltas(mosquitto, range(1, 5)) == {1, 2, 3, 4}, 20,
                   "the restarted aggregator to republish the chain")
        _run([(device, "dev-1")])  # returns once it holds version 4 (the done task's)
    finally:
        serving.halt()

    store = Store(tmp_path / "aggregator.sqlite3")
    full_size, sha256 = store.model_size(4), store.model_sha256(4)
    store.close()
    assert seen == {4: sha256}  # rebuilt bit for bit, and nothing else installed
    assert device.stats.models_via_delta == 1
    assert device.stats.bytes_down < full_size
