"""The bridge against the C simulator over real pseudo-terminals (gcc-built mcu_sim)."""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.dataset import SampleDataset
from firmware_bridge.link import (
    Frame,
    ModelChunk,
    MsgType,
    crc16_ccitt,
    decode_message,
    encode_message,
)
from tests.integration.bridge_harness import (
    McuSim,
    NullModem,
    build_or_skip,
    frame_of,
    wait_until,
    write_samples,
)

pytestmark = pytest.mark.integration
ROWS = [(i % 10, [i, -i, 3 * i, 1000 - i]) for i in range(40)]


@pytest.fixture(scope="module")
def sim_binary(tmp_path_factory) -> Path:
    return build_or_skip("mcu_sim", tmp_path_factory.mktemp("firmware"))


@pytest.fixture
def wire() -> Iterator[NullModem]:
    w = NullModem()
    yield w
    w.close()


class Rig:
    """A bridge on its own thread plus the simulator, both on the pty wire."""

    def __init__(self, sim_binary: Path, wire: NullModem, tmp_path: Path, *sim_args: str,
                 **bridge_overrides) -> None:
        self.wire, self.tmp_path = wire, tmp_path
        samples = write_samples(tmp_path / "samples.txt", ROWS)
        self.sim = McuSim(sim_binary, wire.mcu_port, "--samples", str(samples), "--shape", "4",
                          "--timeout-ms", "400", *sim_args)
        overrides = {"ack_timeout_s": 0.4, **bridge_overrides}
        self.config = BridgeConfig(port=wire.bridge_port, data_dir=tmp_path / "bridge",
                                   **overrides)
        self.bridge = Bridge(self.config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.bridge.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sim.stop()
        assert not self.thread.is_alive()


@pytest.fixture
def rig_factory(sim_binary, wire, tmp_path) -> Iterator:
    rigs: list[Rig] = []

    def make(*sim_args: str, **bridge_overrides) -> Rig:
        rig = Rig(sim_binary, wire, tmp_path, *sim_args, **bridge_overrides)
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()


def _sample_rows(dataset: SampleDataset) -> list[tuple[int | None, list[int]]]:
    return [(s.label, s.values().tolist()) for s in dataset.samples()]


def test_handshake_samples_model_predictions_and_logs(rig_factory, tmp_path):
    rig = rig_factory("--predictions", "3", "--model-out", str(tmp_path / "mcu_model.bin"))
    bridge = rig.bridge
    assert bridge.handshake.wait(10)
    assert bridge.device is not None and bridge.device.device_id == "sim-mcu"
    assert bridge.device.model_capacity == 64 * 1024
    wait_until(lambda: len(bridge.dataset) == len(ROWS), 15, "every sample in the dataset")
    assert _sample_rows(bridge.dataset) == [(label, values) for label, values in ROWS]

    blob = os.urandom(9000)  # any bytes: the link does not care what the model is
    bridge.push_model(blob, version=4)
    wait_until(lambda: bridge.pushes, 15, "the push to finish")
    result = bridge.pushes[0]
    assert result.confirmed and result.crc32 == zlib.crc32(blob)
    line = rig.sim.wait_for("model-installed")
    assert line == f"model-installed version=4 size=9000 crc32={zlib.crc32(blob):08x}"
    assert (tmp_path / "mcu_model.bin").read_bytes() == blob
    # 9000 bytes in chunks of 252 (256-byte payload minus the offset)
    offsets = {decode_message(f).offset for f in list(rig.wire.frames["to_mcu"])
               if f is not None and f.type == MsgType.MODEL_CHUNK}
    assert offsets == set(range(0, 9000, 252))

    wait_until(lambda: len(bridge.predictions) == 3, 10, "three predictions")
    assert [(p.model_version, p.class_index, p.score) for p in bridge.predictions] == \
        [(4, 0, 0.5), (4, 1, 0.5), (4, 2, 0.5)]
    wait_until(lambda: len(bridge.logs) >= 2, 10, "two logs")
    texts = [entry.text for entry in bridge.logs]
    assert f"all {len(ROWS)} samples sent" in texts
    assert f"model v4 installed: 9000 bytes, crc32 {zlib.crc32(blob):08x}" in texts

    events = [json.loads(line) for line in
              (rig.config.data_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds.count("prediction") == 3 and kinds.count("log") >= 2
    assert {"kind": "model", "version": 4, "confirmed": True} .items() <= \
        next(e for e in events if e["kind"] == "model").items()
    assert sum(bridge.stats.frame_errors.values()) == 0


def _corrupt(wire: bytes) -> bytes:
    bad = bytearray(wire)
    i = len(bad) // 2
    bad[i] = bad[i] ^ 0x10 or 0x01  # stays non-zero: one bad frame, not two
    return bytes(bad)


def _once(kind: int, nth: int, action) -> callable:
    """Apply `action` to the nth frame of one type (1-based), once."""
    seen = [0]

    def tamper(wire: bytes) -> list[bytes]:
        frame = frame_of(wire)
        if frame is None or frame.type != kind:
            return [wire]
        seen[0] += 1
        return action(wire) if seen[0] == nth else [wire]
    return tamper


def _chain(*tampers):
    def tamper(wire: bytes) -> list[bytes]:
        pieces = [wire]
        for t in tampers:
            pieces = [out for piece in pieces for out in t(piece)]
        return pieces
    return tamper


def test_corrupted_and_lost_frames_are_resent_and_counted_once(rig_factory, wire):
    # MCU -> bridge: the 5th SAMPLE arrives corrupted.
    wire.tamper["to_bridge"] = _once(MsgType.SAMPLE, 5, lambda w: [_corrupt(w)])
    # bridge -> MCU: the 12th ACK is lost (the MCU resends that sample after its timeout;
    # the bridge must not store it twice), and the 2nd MODEL_CHUNK arrives corrupted.
    wire.tamper["to_mcu"] = _chain(_once(MsgType.ACK, 12, lambda w: []),
                                   _once(MsgType.MODEL_CHUNK, 2, lambda w: [_corrupt(w)]))
    rig = rig_factory()
    bridge = rig.bridge
    wait_until(lambda: len(bridge.dataset) == len(ROWS), 20, "every sample")
    blob = os.urandom(3000)
    bridge.push_model(blob, version=1)
    wait_until(lambda: bridge.pushes, 20, "the push to finish")
    assert bridge.pushes[0].confirmed

    assert _sample_rows(bridge.dataset) == list(ROWS)  # once each, in order
    assert sum(bridge.stats.frame_errors.values()) == 1  # bad_crc or bad_cobs, by byte
    assert bridge.endpoint.stats.duplicates >= 1  # the resend after the lost ACK
    assert bridge.endpoint.stats.retransmissions >= 1  # the corrupted chunk
    # the sim's stdout reaches us on a reader thread, in order: once the install line
    # (printed after the chunk's frame-error) is in, the frame-error line is too
    assert rig.sim.wait_for("model-installed") == \
        f"model-installed version=1 size=3000 crc32={zlib.crc32(blob):08x}"
    assert len(rig.sim.matching("frame-error")) == 1
    assert rig.wire.count("to_bridge", MsgType.SAMPLE) >= len(ROWS) + 2  # two resends


def _tamper_chunk_data(wire: bytes) -> list[bytes]:
    """Change model bytes but re-frame them validly: only the CRC-32 can notice."""
    frame = frame_of(wire)
    assert frame is not None
    chunk = decode_message(frame)
    assert isinstance(chunk, ModelChunk)
    data = bytearray(chunk.data)
    data[0] ^= 0xFF
    return [encode_message(ModelChunk(chunk.offset, bytes(data)), frame.seq)]


def test_the_mcu_checksum_catches_bytes_the_link_could_not(rig_factory, wire):
    wire.tamper["to_mcu"] = _once(MsgType.MODEL_CHUNK, 3, _tamper_chunk_data)
    rig = rig_factory()
    assert rig.bridge.handshake.wait(10)
    blob = os.urandom(2000)
    rig.bridge.push_model(blob, version=2)
    wait_until(lambda: rig.bridge.pushes, 20, "the push to finish")
    result = rig.bridge.pushes[0]
    assert not result.confirmed
    assert "BAD_CHECKSUM" in result.reason
    assert rig.sim.wait_for("model-refused").startswith("model-refused type=18 reason=6")
    assert not rig.sim.matching("model-installed")
    # the next version goes through
    rig.bridge.push_model(blob, version=3)
    wait_until(lambda: len(rig.bridge.pushes) == 2, 20, "the second push")
    assert rig.bridge.confirmed_versions == [3]


def test_a_model_larger_than_the_device_takes_is_not_sent(rig_factory):
    rig = rig_factory("--model-capacity", "1000")
    assert rig.bridge.handshake.wait(10)
    rig.bridge.push_model(b"\x01" * 1001, version=1)
    wait_until(lambda: rig.bridge.pushes, 10, "the refusal")
    assert "capacity of 1000" in rig.bridge.pushes[0].reason
    assert rig.wire.count("to_mcu", MsgType.MODEL_BEGIN) == 0


def test_a_restarted_bridge_keeps_its_dataset_and_finds_the_device_again(rig_factory,
                                                                          tmp_path):
    first = rig_factory()
    wait_until(lambda: len(first.bridge.dataset) == len(ROWS), 15, "every sample")
    first.stop.set()
    first.thread.join(10)
    assert not first.thread.is_alive()  # else two bridges would share the port
    again = Bridge(first.config)  # same data dir, same port, the MCU still running
    assert len(again.dataset) == len(ROWS)
    stop = threading.Event()
    thread = threading.Thread(target=again.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert again.handshake.wait(10)  # our HELLO made the MCU announce itself
        again.push_model(b"model-bytes" * 50, version=7)
        wait_until(lambda: again.pushes, 10, "the push")
        assert again.confirmed_versions == [7]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    npz = tmp_path / "mcu.npz"
    assert again.dataset.export_npz(npz) == len(ROWS)
    with np.load(npz, allow_pickle=False) as data:
        assert data["x"].shape == (len(ROWS), 4) and data["x"].dtype == np.float32
        assert data["y"].tolist() == [label for label, _ in ROWS]


def test_frames_the_simulator_sends_match_the_python_encoding(rig_factory, wire):
    """Byte-level agreement on live traffic, beyond the vector file."""
    rig = rig_factory()
    wait_until(lambda: len(rig.bridge.dataset) == len(ROWS), 15, "every sample")
    samples = [f for f in list(wire.frames["to_bridge"]) if f and f.type == MsgType.SAMPLE]
    label, values = ROWS[0]
    payload = struct.pack("<BBHB", 1, 1, label, 1) + struct.pack("<H", 4) + \
        struct.pack("<4h", *values)
    assert samples[0].payload == payload
    assert crc16_ccitt(payload) != 0  # the payload is not trivially empty
    assert samples[0] == Frame(MsgType.SAMPLE, samples[0].seq, payload)
