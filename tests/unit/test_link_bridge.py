"""The Bridge's logic with an in-memory port and a Python endpoint playing the MCU."""

from __future__ import annotations

import json
import threading
import time
import zlib

import pytest

from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.federation import ModelRelay
from firmware_bridge.link import (
    Ack,
    Capability,
    Hello,
    LinkEndpoint,
    Log,
    ModelBegin,
    ModelChunk,
    ModelEnd,
    Nack,
    NackReason,
    Prediction,
    Received,
    Sample,
    crc32,
)

ALL_CAPS = int(Capability.SAMPLES | Capability.LABELS | Capability.MODEL_UPDATE
               | Capability.INFERENCE | Capability.LOGS)


class FakePort:
    """Bytes in both directions, no waiting: the bridge's step() returns at once.
    Locked, because one test runs the bridge on its own thread."""

    def __init__(self) -> None:
        self.to_bridge = bytearray()
        self.from_bridge = bytearray()
        self.lock = threading.Lock()

    @property
    def in_waiting(self) -> int:
        return len(self.to_bridge)

    def read(self, size: int = 1) -> bytes:
        with self.lock:
            data = bytes(self.to_bridge[:size])
            del self.to_bridge[:size]
        return data

    def write(self, data: bytes) -> int:
        with self.lock:
            self.from_bridge += data
        return len(data)

    def take_written(self) -> bytes:
        with self.lock:
            data = bytes(self.from_bridge)
            self.from_bridge.clear()
        return data

    def give(self, data: bytes) -> None:
        with self.lock:
            self.to_bridge += data

    def close(self) -> None:
        pass


class PyMcu:
    """An MCU in Python: assembles models like fedge_link.c's model receiver."""

    def __init__(self, capacity: int = 4096, caps: int = ALL_CAPS) -> None:
        self.endpoint = LinkEndpoint(answer=self.answer)
        self.capacity, self.caps = capacity, caps
        self.buffer = bytearray()
        self.expected: ModelBegin | None = None
        self.installed: list[tuple[int, bytes]] = []
        self.received: list = []

    def answer(self, message):
        if isinstance(message, ModelBegin):
            self.expected, self.buffer = message, bytearray()
            return Ack(0)
        if isinstance(message, ModelChunk):
            if self.expected is None or message.offset != len(self.buffer):
                return Nack(0, NackReason.BAD_OFFSET)
            self.buffer += message.data
            return Ack(0)
        if isinstance(message, ModelEnd):
            crc = crc32(bytes(self.buffer))
            if self.expected is None or crc != self.expected.crc32:
                return Nack(0, NackReason.BAD_CHECKSUM, crc)
            self.installed.append((message.version, bytes(self.buffer)))
            return Ack(0, crc)
        return Ack(0)

    def hello(self, now: float = 0.0) -> None:
        self.endpoint.send(Hello("py-mcu", 3, self.caps, 256, self.capacity), now)


def make(tmp_path, mcu: PyMcu | None = None) -> tuple[Bridge, PyMcu, FakePort]:
    port = FakePort()
    bridge = Bridge(BridgeConfig(port="fake", data_dir=tmp_path), port=port)
    return bridge, mcu or PyMcu(), port


def pump(bridge: Bridge, mcu: PyMcu, port: FakePort, rounds: int = 400) -> None:
    for _ in range(rounds):
        bridge.step()
        data = bytes(port.from_bridge)
        port.from_bridge.clear()
        mcu.received += [e.message for e in mcu.endpoint.receive_data(data, 0.0)
                         if isinstance(e, Received)]
        port.to_bridge += mcu.endpoint.data_to_send()
        if not data and not port.to_bridge and mcu.endpoint.idle and bridge.endpoint.idle:
            return


def test_handshake_then_samples_predictions_and_logs_are_recorded(tmp_path):
    bridge, mcu, port = make(tmp_path)
    pump(bridge, mcu, port)
    assert isinstance(mcu.received[0], Hello) and mcu.received[0].device_id == "fedge-bridge"
    assert bridge.device is None  # the MCU has not said who it is yet
    mcu.hello()
    for i in range(3):
        mcu.endpoint.send(Sample.from_values([i, i], (2,), label=i), 0.0)
    mcu.endpoint.send(Prediction(0, 4, 0.75), 0.0)
    mcu.endpoint.send(Log(2, "low battery"), 0.0)
    pump(bridge, mcu, port)
    assert bridge.device is not None and bridge.device.device_id == "py-mcu"
    assert bridge.handshake.is_set()
    assert [s.values().tolist() for s in bridge.dataset.samples()] == [[0, 0], [1, 1], [2, 2]]
    assert [(p.class_index, p.score) for p in bridge.predictions] == [(4, 0.75)]
    assert [(e.level, e.text) for e in bridge.logs] == [("WARNING", "low battery")]
    kinds = [json.loads(line)["kind"] for line in
             (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["hello", "prediction", "log"]


def test_samples_before_the_hello_are_not_stored(tmp_path):
    bridge, mcu, port = make(tmp_path)
    mcu.endpoint.send(Sample.from_values([1], (1,), label=1), 0.0)
    pump(bridge, mcu, port)
    assert len(bridge.dataset) == 0 and bridge.stats.samples_refused == 1


def test_a_model_asked_for_before_the_handshake_waits_for_it(tmp_path):
    bridge, mcu, port = make(tmp_path)
    blob = bytes(range(200)) * 5
    bridge.push_model(blob, 3)
    pump(bridge, mcu, port)
    assert not mcu.installed
    mcu.hello()
    pump(bridge, mcu, port)
    assert mcu.installed == [(3, blob)]
    assert bridge.confirmed_versions == [3]
    assert bridge.pushes[0].crc32 == zlib.crc32(blob)


def test_a_newer_model_replaces_an_older_one_and_older_requests_are_ignored(tmp_path):
    bridge, mcu, port = make(tmp_path)
    mcu.hello()
    pump(bridge, mcu, port)
    bridge.push_model(b"A" * 3000, 1)
    for _ in range(3):  # the push of v1 has begun
        bridge.step()
    bridge.push_model(b"B" * 700, 2)
    bridge.push_model(b"C" * 700, 1)  # older than what is on its way: ignored
    pump(bridge, mcu, port)
    assert [v for v, _ in mcu.installed] == [2]
    assert mcu.installed[-1][1] == b"B" * 700


def test_a_device_that_restarts_gets_the_model_again(tmp_path):
    bridge, mcu, port = make(tmp_path)
    mcu.hello()
    pump(bridge, mcu, port)
    bridge.push_model(b"model" * 100, 4)
    pump(bridge, mcu, port)
    rebooted = PyMcu()
    rebooted.hello()
    pump(bridge, rebooted, port)
    assert rebooted.installed == [(4, b"model" * 100)]
    assert bridge.confirmed_versions == [4, 4]
    assert bridge.stats.hellos == 2


@pytest.mark.parametrize(("mcu", "problem"), [
    (PyMcu(capacity=100), "capacity of 100"),
    (PyMcu(caps=int(Capability.SAMPLES)), "does not take model updates"),
])
def test_a_device_that_cannot_take_the_model_is_not_sent_it(tmp_path, mcu, problem):
    bridge, mcu, port = make(tmp_path, mcu)
    mcu.hello()
    bridge.push_model(b"x" * 200, 1)
    pump(bridge, mcu, port)
    assert not bridge.pushes[0].confirmed and problem in bridge.pushes[0].reason
    assert not any(isinstance(m, ModelBegin) for m in mcu.received)


def test_model_relay_converts_and_queues_or_records_why_not(tmp_path):
    bridge, mcu, port = make(tmp_path)
    mcu.hello()

    def to_bytes(version, arch, weights):
        if version == 0:
            raise ValueError("no activation ranges yet")
        return f"{arch['kind']}-v{version}".encode()
    relay = ModelRelay(bridge, to_bytes)
    relay.on_model(0, {"kind": "mlp"}, {})
    relay.on_model(1, {"kind": "mlp"}, {})
    pump(bridge, mcu, port)
    assert relay.failed == {0: "no activation ranges yet"} and relay.relayed == [1]
    assert mcu.installed == [(1, b"mlp-v1")]


class FailingPort(FakePort):
    """A port that fails like an unplugged USB adapter once `unplug` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.unplugged = False
        self.closed = False

    def read(self, size: int = 1) -> bytes:
        if self.unplugged:
            raise OSError(5, "device reports readiness to read but returned no data")
        return super().read(size)

    def close(self) -> None:
        self.closed = True


def test_an_unplugged_port_is_reopened_and_the_device_found_again(tmp_path):
    ports = [FailingPort(), FailingPort()]
    opened: list[FailingPort] = []
    failures = [OSError(2, "no such device")]  # the first reopen attempt finds nothing

    def opener():
        if len(opened) == 1 and failures:
            raise failures.pop()
        opened.append(ports[len(opened)])
        return opened[-1]
    config = BridgeConfig(port="fake", data_dir=tmp_path, reopen_interval_s=0.01,
                          read_timeout_s=0.01, hello_interval_s=0.05)
    bridge = Bridge(config, opener=opener)
    bridge.push_model(b"m" * 300, 1)
    mcus = [PyMcu(), PyMcu()]
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()

    def serve(index: int, until) -> None:
        deadline = time.monotonic() + 10
        while not until() and time.monotonic() < deadline:
            if len(opened) > index:
                port, mcu = opened[index], mcus[index]
                for e in mcu.endpoint.receive_data(port.take_written(), 0.0):
                    if isinstance(e, Received) and isinstance(e.message, Hello):
                        mcu.hello()  # answer the bridge's HELLO, as firmware does
                port.give(mcu.endpoint.data_to_send())
            time.sleep(0.002)
    try:
        serve(0, lambda: len(bridge.confirmed_versions) == 1)
        ports[0].unplugged = True
        serve(1, lambda: len(bridge.confirmed_versions) == 2)
    finally:
        stop.set()
        thread.join(5)
    assert mcus[0].installed == mcus[1].installed == [(1, b"m" * 300)]
    assert ports[0].closed and len(opened) == 2 and not failures
    assert bridge.confirmed_versions == [1, 1]


@pytest.mark.parametrize("max_payload", [0, 4, 11])
def test_a_device_whose_payloads_are_too_small_for_a_push_does_not_stop_the_bridge(
        tmp_path, max_payload):
    """Its HELLO is untrusted input: the push fails with the reason, the loop goes on."""
    bridge, mcu, port = make(tmp_path)
    bridge.push_model(b"m" * 100, 1)
    mcu.endpoint.send(Hello("tiny-mcu", 3, ALL_CAPS, max_payload, 4096), 0.0)
    mcu.endpoint.send(Sample.from_values([7], (1,), label=1), 0.0)
    pump(bridge, mcu, port)
    assert not bridge.pushes[0].confirmed
    assert f"at most {max_payload} bytes" in bridge.pushes[0].reason
    assert not any(isinstance(m, ModelBegin) for m in mcu.received)
    assert len(bridge.dataset) == 1  # still serving the device


@pytest.mark.parametrize(("blob", "version", "problem"), [
    (b"", 1, "empty"),
    (b"m", -1, "version"),
    (b"m", 1 << 32, "version"),
])
def test_a_model_that_cannot_be_pushed_is_refused_by_push_model(tmp_path, blob, version,
                                                                 problem):
    """Refused on the caller's thread, not later on the bridge's, where it would end the
    loop."""
    bridge, mcu, port = make(tmp_path)
    with pytest.raises(ValueError, match=problem):
        bridge.push_model(blob, version)
    mcu.hello()
    pump(bridge, mcu, port)
    assert bridge.device is not None and not bridge.pushes


def test_events_stay_strict_json_when_the_mcu_sends_a_nan_or_infinite_score(tmp_path):
    """The score is the MCU's f32, untrusted: NaN and inf are not JSON, so a strict reader
    of events.jsonl (jq, a browser) would stop at that line."""
    bridge, mcu, port = make(tmp_path)
    mcu.hello()
    for score in (float("nan"), float("inf"), 0.25):
        mcu.endpoint.send(Prediction(1, 2, score), 0.0)
    pump(bridge, mcu, port)

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    events = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [e["score"] for e in events if e["kind"] == "prediction"] == [None, None, 0.25]
    assert len(bridge.predictions) == 3  # kept in memory as sent


def test_a_sample_that_could_not_be_stored_is_asked_for_again_and_stored_once(tmp_path):
    """The bridge ACKs a sample only once it is on disk; a failed write answers BUSY, the
    MCU resends, and the resend is taken (not mistaken for a repeat of a stored one)."""
    bridge, mcu, port = make(tmp_path)
    mcu.hello()
    pump(bridge, mcu, port)
    real_append, failures = bridge.dataset.append, []

    def append_failing_once(sample, device_id, when=None):
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return real_append(sample, device_id, when)
    bridge.dataset.append = append_failing_once
    mcu.endpoint.send(Sample.from_values([7, 8], (2,), label=1), 0.0)
    pump(bridge, mcu, port)
    mcu.endpoint.handle_timeout(10.0)  # a BUSY NACK is retried: resend now
    pump(bridge, mcu, port)
    assert failures == [1]
    assert [s.values().tolist() for s in bridge.dataset.samples()] == [[7, 8]]
    assert bridge.stats.samples == 1 and bridge.stats.samples_refused == 1
    assert mcu.endpoint.idle and mcu.endpoint.stats.delivered >= 2  # HELLO and the sample


def test_a_sample_the_dataset_refuses_is_nacked_not_acked(tmp_path):
    bridge, mcu, port = make(tmp_path)
    mcu.hello()
    pump(bridge, mcu, port)

    def refuse(sample, device_id, when=None):
        raise ValueError("window too long for this dataset")
    bridge.dataset.append = refuse
    token = mcu.endpoint.send(Sample.from_values([1, 2], (2,), label=0), 0.0)
    events = []
    for _ in range(50):
        bridge.step()
        data = bytes(port.from_bridge)
        port.from_bridge.clear()
        events += mcu.endpoint.receive_data(data, 0.0)
        port.to_bridge += mcu.endpoint.data_to_send()
    failed = [e for e in events if type(e).__name__ == "Failed" and e.token == token]
    assert failed and bridge.stats.samples == 0 and bridge.stats.samples_refused == 1
