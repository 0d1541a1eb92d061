"""End to end: the C "MCU" streams labelled digits through a pty to the bridge; the edge
client on the gateway trains on them with the aggregator over real mosquitto; every new
global model goes back to the MCU as a full-int8 .tflite, which the MCU confirms by
CRC-32. The bytes the MCU holds at the end then run in TFLite Micro's interpreter."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.export import quantized_graph, to_tflite
from edge_client.export.int8_reference import run_int8
from edge_client.training import mlp_trainer
from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.federation import ModelRelay
from tests.integration.bridge_harness import (
    McuSim,
    NullModem,
    build_or_skip,
    wait_until,
    write_samples,
)
from tests.integration.fleet import FEDERATION, Digits, Running, make_aggregator, make_client

pytestmark = pytest.mark.integration
ROUNDS = 3
PIXEL_SCALE = 16  # digits are k/16 in [0, 1]: the MCU sends k as int16


def qat_accuracy(digits: Digits, weights: dict) -> float:
    trainer = mlp_trainer(digits.sizes, qat=True)
    trainer.set_weights(weights)
    return trainer.evaluate(digits.x_test, digits.y_test)["accuracy"]


@dataclass
class Outcome:
    digits: Digits
    arch: dict
    final_weights: dict
    initial_accuracy: float
    bridge: Bridge
    relay: ModelRelay
    sim: McuSim
    mcu_client: EdgeClient
    mcu_x: np.ndarray
    mcu_y: np.ndarray
    mcu_model: bytes


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, request) -> Outcome:
    tmp = tmp_path_factory.mktemp("bridge-federation")
    sim_binary = build_or_skip("mcu_sim", tmp)
    mosquitto = request.getfixturevalue("mosquitto_module")
    digits = Digits(devices=2)
    arch = {"kind": "mlp", "sizes": digits.sizes, "qat": True}
    x0, y0 = digits.shards[0]
    rows = [(int(label), [int(v) for v in np.rint(row * PIXEL_SCALE)])
            for row, label in zip(x0, y0, strict=True)]
    samples = write_samples(tmp / "digits.txt", rows)

    wire = NullModem()
    sim = McuSim(sim_binary, wire.mcu_port, "--samples", str(samples), "--shape", "8x8",
                 "--model-out", str(tmp / "mcu_model.tflite"), "--predictions", "2")
    bridge = Bridge(BridgeConfig(port=wire.bridge_port, data_dir=tmp / "bridge"))
    bridge_run = Running(bridge.run, "bridge")
    try:
        wait_until(lambda: len(bridge.dataset) == len(rows), 60, "the MCU's samples")
        mcu_x, mcu_y = bridge.dataset.arrays(scale=1 / PIXEL_SCALE)

        initial = mlp_trainer(digits.sizes, seed=0, qat=True).get_weights()
        agg = make_aggregator(mosquitto, tmp, digits, initial=initial, arch=arch,
                              rounds=ROUNDS)
        relay = ModelRelay(bridge)  # int8 .tflite by default
        config = ClientConfig(device_id="mcu-gateway", federation=FEDERATION,
                              host=mosquitto.host, port=mosquitto.port,
                              state_dir=tmp / "mcu-gateway",
                              eligibility=EligibilityConfig(enabled=False))
        mcu_client = EdgeClient(config, mlp_trainer(digits.sizes, seed=1, qat=True),
                                mcu_x, mcu_y, on_model=relay.on_model)
        other = make_client(mosquitto, tmp, digits, 1,
                            trainer=mlp_trainer(digits.sizes, seed=2, qat=True))
        runs = [Running(agg.run, "aggregator"), Running(mcu_client.run, "mcu-gateway"),
                Running(other.run, "dev-1")]
        for run in runs:
            run.join(90)
        assert agg.version == ROUNDS
        wait_until(lambda: ROUNDS in bridge.confirmed_versions, 30,
                   "the MCU to confirm the final model")
        sim.wait_for(f"model-installed version={ROUNDS} ")
        wait_until(lambda: sum(p.model_version == ROUNDS for p in bridge.predictions) == 2,
                   10, "the MCU's predictions with the final model")
    finally:
        bridge_run.halt()
        sim.stop()
        wire.close()
    return Outcome(digits, arch, agg.global_weights, qat_accuracy(digits, initial), bridge, relay,
                   sim, mcu_client, mcu_x, mcu_y, (tmp / "mcu_model.tflite").read_bytes())


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory):
    """One broker for the module's single federation (the shared fixture is per test)."""
    from fedge.broker import MosquittoBroker, find_mosquitto

    if find_mosquitto() is None:
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    broker = MosquittoBroker.start(workdir=tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


def test_mcu_samples_arrive_intact_and_train_the_federation(outcome):
    x0, y0 = outcome.digits.shards[0]
    np.testing.assert_array_equal(outcome.mcu_x, x0)  # every pixel, through C and the pty
    np.testing.assert_array_equal(outcome.mcu_y, y0)
    client = outcome.mcu_client
    assert client.stats.acks["accepted"] == ROUNDS  # one update per round, from MCU data
    final = qat_accuracy(outcome.digits, outcome.final_weights)
    assert final > outcome.initial_accuracy + 0.3


def test_every_trained_model_reaches_the_mcu_as_int8_tflite(outcome):
    expected = to_tflite(outcome.arch, outcome.final_weights, int8=True)
    assert outcome.mcu_model == expected  # the MCU holds exactly the final int8 model
    assert expected[4:8] == b"TFL3"
    final_push = next(p for p in outcome.bridge.pushes if p.version == ROUNDS)
    assert final_push.confirmed and final_push.crc32 == zlib.crc32(expected)
    installed = outcome.sim.matching("model-installed")
    assert installed[-1] == (f"model-installed version={ROUNDS} size={len(expected)} "
                             f"crc32={zlib.crc32(expected):08x}")
    # version 0 is QAT with untrained ranges, which int8 export refuses: nothing to send
    assert set(outcome.relay.failed) <= {0}
    assert set(outcome.relay.relayed) >= {ROUNDS}
    assert all(p.confirmed for p in outcome.bridge.pushes)


def test_the_model_the_mcu_holds_runs_in_tflite_micro(outcome):
    runtime = pytest.importorskip(
        "tflite_micro.python.tflite_micro.runtime",
        reason="tflite-micro is pinned to a dev build with x86_64 wheels only")
    qgraph = quantized_graph(outcome.arch, outcome.final_weights)
    x = outcome.digits.x_test[:40]
    interpreter = runtime.Interpreter.from_bytes(outcome.mcu_model)
    codes = []
    for row in qgraph.input.quantize(x):
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        codes.append(interpreter.get_output(0))
    micro = np.concatenate(codes).astype(np.int32)
    reference = run_int8(qgraph, qgraph.input.quantize(x)).astype(np.int32)
    assert np.abs(micro - reference).max() <= 1
    assert (micro.argmax(1) == outcome.digits.y_test[:40]).mean() > 0.7
