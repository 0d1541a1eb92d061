"""The host bridge: one MCU on a serial port, its samples on disk, models back to it.

`Bridge.run` is the thin I/O shell around a sans-IO `LinkEndpoint`: it reads the port,
feeds the endpoint, writes what the endpoint wants sent and fires its timers. Other
threads (the edge client's on_model callback) talk to it only through `push_model`,
which queues; everything else happens on the bridge's own thread.

The handshake: the bridge sends HELLO until the MCU answers with its own HELLO (an MCU
also announces itself when it boots). Samples are accepted only after that, because the
dataset records which device they came from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from firmware_bridge.dataset import SampleDataset
from firmware_bridge.link import (
    DEFAULT_MAX_PAYLOAD,
    Ack,
    Capability,
    Delivered,
    Failed,
    FrameError,
    Hello,
    LinkEndpoint,
    Log,
    LogLevel,
    Nack,
    NackReason,
    Prediction,
    Received,
    RetryPolicy,
    Sample,
)
from firmware_bridge.model_push import (
    CHUNK_HEADER,
    MIN_PUSH_PAYLOAD,
    ModelPush,
    PushState,
    check_model,
)

log = logging.getLogger(__name__)
BRIDGE_ID = "fedge-bridge"
BRIDGE_FIRMWARE_VERSION = 1


class SerialLike(Protocol):
    """What the bridge needs of a pyserial port (tests may pass any such object)."""

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...

    @property
    def in_waiting(self) -> int: ...


@dataclass
class BridgeConfig:
    """Everything `fedge bridge` tunes; see docs/firmware-bridge.md."""

    port: str
    data_dir: Path
    baud: int = 115200
    max_payload: int = DEFAULT_MAX_PAYLOAD
    ack_timeout_s: float = 0.5
    max_retries: int = 5
    hello_interval_s: float = 2.0  # resend our HELLO this often until the MCU answers
    max_samples: int = 50_000
    read_timeout_s: float = 0.02
    reopen_interval_s: float = 1.0  # after the port fails (USB unplugged), retry this often
    fsync: bool = False  # fsync the dataset after every sample (slow on SD cards)
    recent: int = 1000  # predictions and logs kept in memory

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if min(self.baud, self.hello_interval_s, self.read_timeout_s,
               self.reopen_interval_s) <= 0:
            raise ValueError("baud, hello_interval_s, read_timeout_s and reopen_interval_s "
                             "must be > 0")


@dataclass(frozen=True)
class PredictionRecord:
    time: float
    device_id: str
    model_version: int
    class_index: int
    score: float


@dataclass(frozen=True)
class LogRecord:
    time: float
    device_id: str
    level: str
    text: str


@dataclass(frozen=True)
class PushResult:
    version: int
    size: int
    crc32: int
    confirmed: bool
    reason: str
    time: float


@dataclass
class BridgeStats:
    samples: int = 0
    samples_refused: int = 0  # before the handshake, or that did not fit the dataset
    predictions: int = 0
    logs: int = 0
    hellos: int = 0
    frame_errors: Counter = field(default_factory=Counter)


def open_serial(port: str, baud: int, timeout_s: float) -> SerialLike:
    """A pyserial port for a device path (/dev/ttyUSB0) or URL (socket://, rfc2217://)."""
    try:
        import serial
    except ImportError as exc:
        raise ImportError("the bridge needs pyserial: pip install 'fedge[bridge]'") from exc
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=timeout_s,
                                     write_timeout=5.0)
    except (serial.SerialException, ValueError) as exc:
        raise OSError(f"cannot open serial port {port}: {exc}") from exc


class Bridge:
    """Runs one MCU link until stopped. Give `port` to use an already-open port."""

    def __init__(self, config: BridgeConfig, port: SerialLike | None = None,
                 dataset: SampleDataset | None = None,
                 on_confirmed: Callable[[PushResult], None] | None = None,
                 opener: Callable[[], SerialLike] | None = None) -> None:
        self.config = config
        # The bridge reopens a failed port only if it can open one itself.
        self._can_reopen = port is None or opener is not None
        self._opener = opener or (lambda: open_serial(config.port, config.baud,
                                                      config.read_timeout_s))
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset or SampleDataset(config.data_dir / "samples",
                                                config.max_samples, fsync=config.fsync)
        self.endpoint = LinkEndpoint(config.max_payload,
                                     RetryPolicy(config.ack_timeout_s, config.max_retries),
                                     answer=self._answer)
        self.stats = BridgeStats()
        self.device: Hello | None = None
        self.predictions: deque[PredictionRecord] = deque(maxlen=config.recent)
        self.logs: deque[LogRecord] = deque(maxlen=config.recent)
        self.pushes: list[PushResult] = []
        self.on_confirmed = on_confirmed
        self._port = port
        self._requests: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self._wanted: tuple[bytes, int] | None = None  # the newest model asked for
        self._push: ModelPush | None = None
        self._push_token: int | None = None
        self._hello_token: int | None = None
        self._next_hello = 0.0
        self._events_path = config.data_dir / "events.jsonl"
        self.handshake = threading.Event()

    # ------------------------------------------------------------ other threads
    def push_model(self, blob: bytes, version: int) -> None:
        """Queue a model for the MCU; a newer one replaces one not yet started.
        ValueError here, on the caller's thread, for a model no MCU could be sent."""
        check_model(blob, int(version))
        self._requests.put((bytes(blob), int(version)))

    @property
    def confirmed_versions(self) -> list[int]:
        return [p.version for p in list(self.pushes) if p.confirmed]

    # ------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Serve the link until `stop` is set.

        The bridge opens the port itself unless one was given; when the port fails (the
        USB cable pulled) it closes it and opens it again every `reopen_interval_s` until
        the device is back. A port given without an `opener` is not reopened: its
        failure ends `run` with the OSError.
        """
        own_port = self._can_reopen
        try:
            while not stop.is_set():
                if self._port is None and not self._reopen(stop):
                    continue
                try:
                    self.step()
                except OSError as exc:  # pyserial's SerialException is an OSError
                    if not own_port:
                        raise
                    log.error("bridge: serial port %s failed (%s); reopening it",
                              self.config.port, exc)
                    self._close_port()
        finally:
            if self._port is not None:
                with contextlib.suppress(OSError):
                    self._flush()
                if own_port:
                    self._close_port()

    def _reopen(self, stop: threading.Event) -> bool:
        try:
            self._port = self._opener()
        except OSError as exc:
            log.warning("bridge: cannot open %s (%s); trying again in %.0f s",
                        self.config.port, exc, self.config.reopen_interval_s)
            stop.wait(self.config.reopen_interval_s)
            return False
        # Whatever was in flight is lost; the device is asked who it is again, and the
        # newest model goes to it again after its HELLO.
        self.endpoint.reset("the serial port was reopened")
        self.device = None
        self._hello_token = self._push_token = None
        self._next_hello = 0.0
        return True

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(OSError):
                port.close()

    def step(self) -> None:
        """One turn: read what arrived (waiting at most read_timeout_s), then act on it."""
        assert self._port is not None
        data = self._port.read(max(1, self._port.in_waiting))
        now = time.monotonic()
        if data:
            self._handle(self.endpoint.receive_data(data, now), now)
        self._handle(self.endpoint.handle_timeout(now), now)
        self._maybe_hello(now)
        self._take_requests()
        self._advance_push(now)
        self._flush()

    def _flush(self) -> None:
        out = self.endpoint.data_to_send()
        if out and self._port is not None:
            self._port.write(out)

    # ------------------------------------------------------------ handshake
    def _maybe_hello(self, now: float) -> None:
        if self.device is not None or self._hello_token is not None or now < self._next_hello:
            return
        self._next_hello = now + self.config.hello_interval_s
        hello = Hello(BRIDGE_ID, BRIDGE_FIRMWARE_VERSION, int(Capability.MODEL_UPDATE),
                      self.config.max_payload, 0)
        self._hello_token = self.endpoint.send(hello, now)

    def _on_device_hello(self, hello: Hello, now: float) -> None:
        restarted = self.device is not None
        self.device = hello
        self.stats.hellos += 1
        self._hello_token = None
        # The MCU (re)started: whatever we had in flight is lost on its side.
        self.endpoint.cancel_all("the device restarted")
        self._push_token = None
        if self._wanted is not None:  # a restarted MCU lost the model in its RAM: resend
            self._push = self._new_push(*self._wanted)
        log.info("bridge: device %s (firmware %#x, capabilities %#x, max payload %d, model "
                 "capacity %d)%s", hello.device_id, hello.firmware_version, hello.capabilities,
                 hello.max_payload, hello.model_capacity, " again" if restarted else "")
        self._record({"kind": "hello", "device": hello.device_id,
                       "firmware": hello.firmware_version, "capabilities": hello.capabilities,
                       "max_payload": hello.max_payload,
                       "model_capacity": hello.model_capacity})
        self.handshake.set()

    # ------------------------------------------------------------ events
    def _handle(self, events: list, now: float) -> None:
        for event in events:
            if isinstance(event, Received):
                self._on_message(event.message, now)
            elif isinstance(event, Delivered | Failed):
                self._on_settled(event)
            elif isinstance(event, FrameError):
                self.stats.frame_errors[event.error.code] += 1
                log.debug("bridge: bad frame from the device: %s", event.error)

    def _on_message(self, message: Any, now: float) -> None:
        if isinstance(message, Hello):
            self._on_device_hello(message, now)
        elif self.device is None:
            self.stats.samples_refused += isinstance(message, Sample)
            log.warning("bridge: %s before the device's HELLO; dropped", type(message).__name__)
        elif isinstance(message, Sample):
            self._on_sample(message)
        elif isinstance(message, Prediction):
            self._on_prediction(message)
        elif isinstance(message, Log):
            self._on_log(message)
        else:
            log.warning("bridge: unexpected %s from the device", type(message).__name__)

    def _answer(self, message: Any) -> Ack | Nack:
        """A sample is stored before it is acknowledged: an MCU that gets the ACK may
        forget the window. A failed write asks for a resend (BUSY), a sample the dataset
        refuses is answered BAD_PAYLOAD; other messages are handled once delivered."""
        if not isinstance(message, Sample) or self.device is None:
            return Ack(0)
        try:
            self.dataset.append(message, self.device.device_id)
        except OSError as exc:
            self.stats.samples_refused += 1
            log.error("bridge: could not store a sample, asking for it again: %s", exc)
            return Nack(0, NackReason.BUSY)
        except ValueError as exc:
            self.stats.samples_refused += 1
            log.error("bridge: refused a sample: %s", exc)
            return Nack(0, NackReason.BAD_PAYLOAD)
        return Ack(0)

    def _on_sample(self, sample: Sample) -> None:
        """Delivered, so already stored by `_answer` (a refused one is not delivered)."""
        self.stats.samples += 1

    def _on_prediction(self, p: Prediction) -> None:
        assert self.device is not None
        record = PredictionRecord(time.time(), self.device.device_id, p.model_version,
                                  p.class_index, p.score)
        # on disk first, so whoever sees the record in memory also finds it in the file
        self._record({"kind": "prediction", "device": record.device_id,
                      "model_version": p.model_version, "class": p.class_index,
                      # the MCU's f32 may be NaN or inf, which JSON has no words for
                      "score": p.score if math.isfinite(p.score) else None})
        self.predictions.append(record)
        self.stats.predictions += 1

    def _on_log(self, entry: Log) -> None:
        assert self.device is not None
        level = LogLevel(entry.level).name
        record = LogRecord(time.time(), self.device.device_id, level, entry.text)
        log.log(getattr(logging, level), "device %s: %s", record.device_id, entry.text)
        self._record({"kind": "log", "device": record.device_id, "level": level,
                      "text": entry.text})
        self.logs.append(record)
        self.stats.logs += 1

    def _record(self, entry: dict) -> None:
        """Append to events.jsonl in the data dir: what the MCU said, for later reading."""
        entry = {"time": round(time.time(), 3), **entry}
        try:
            with open(self._events_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:
            log.error("bridge: cannot write %s: %s", self._events_path, exc)

    # ------------------------------------------------------------ model pushes
    def _take_requests(self) -> None:
        newest = None
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if newest is None or request[1] > newest[1]:
                newest = request
        if newest is None:
            return
        blob, version = newest
        if self._wanted is not None and self._wanted[1] >= version:
            return  # an older version than the one already pushed or on its way
        # A newer model replaces one still on its way; the MCU restarts at MODEL_BEGIN.
        self._wanted = (blob, version)
        self._push = self._new_push(blob, version)
        self._push_token = None

    def _new_push(self, blob: bytes, version: int) -> ModelPush:
        """Chunks fill the payload the MCU said it takes (its HELLO lowers the default).
        A device whose limit leaves no room is refused by `_cannot_take`, not here."""
        chunk = max(1, self.endpoint.peer_max_payload - CHUNK_HEADER)
        return ModelPush(blob, version, chunk)

    def _advance_push(self, now: float) -> None:
        push = self._push
        if push is None or push.done or self.device is None or self._push_token is not None:
            return
        problem = self._cannot_take(push)
        if problem:
            push.state, push.reason = PushState.FAILED, problem
            self._finish_push(push)
            return
        message = push.next_message()
        if message is not None:
            self._push_token = self.endpoint.send(message, now)

    def _cannot_take(self, push: ModelPush) -> str:
        device = self.device
        assert device is not None
        if not device.capabilities & Capability.MODEL_UPDATE:
            return f"device {device.device_id} does not take model updates"
        if self.endpoint.peer_max_payload < MIN_PUSH_PAYLOAD:
            return (f"device {device.device_id} takes payloads of at most "
                    f"{self.endpoint.peer_max_payload} bytes; a model push needs "
                    f"{MIN_PUSH_PAYLOAD}")
        if len(push.blob) > device.model_capacity:
            return (f"model of {len(push.blob)} bytes is larger than device "
                    f"{device.device_id}'s capacity of {device.model_capacity}")
        return ""

    def _on_settled(self, event: Delivered | Failed) -> None:
        if event.token == self._hello_token:
            self._hello_token = None
            return
        if event.token != self._push_token or self._push is None:
            return
        self._push_token = None
        if isinstance(event, Delivered):
            self._push.on_delivered(event.message, event.ack)
        else:
            self._push.on_failed(event.message, event.reason)
        if self._push.done:
            self._finish_push(self._push)

    def _finish_push(self, push: ModelPush) -> None:
        confirmed = push.state is PushState.CONFIRMED
        result = PushResult(push.version, len(push.blob), push.crc32, confirmed, push.reason,
                            time.time())
        if confirmed:
            log.info("bridge: model v%d (%d bytes, crc32 %08x) confirmed by the device",
                     push.version, len(push.blob), push.crc32)
        else:
            log.error("bridge: model v%d not delivered: %s", push.version, push.reason)
        self._record({"kind": "model", "version": push.version, "size": len(push.blob),
                      "crc32": f"{push.crc32:08x}", "confirmed": confirmed,
                      "reason": push.reason})
        self.pushes.append(result)
        if self.on_confirmed is not None and confirmed:
            self.on_confirmed(result)
