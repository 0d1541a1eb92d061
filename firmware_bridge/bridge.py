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
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from firmware_bridge.bridge_config import (
    BridgeConfig,
    BridgeStats,
    LogRecord,
    PredictionRecord,
    PushResult,
    SerialLike,
    open_serial,
)
from firmware_bridge.dataset import SampleDataset
from firmware_bridge.journal import DeviceJournal
from firmware_bridge.link import (
    Ack,
    Capability,
    Delivered,
    Failed,
    FrameError,
    Hello,
    LinkEndpoint,
    Log,
    Nack,
    NackReason,
    Prediction,
    Received,
    RetryPolicy,
    Sample,
)
from firmware_bridge.model_pusher import ModelPusher

log = logging.getLogger(__name__)
BRIDGE_ID = "fedge-bridge"
BRIDGE_FIRMWARE_VERSION = 1

__all__ = ["BRIDGE_FIRMWARE_VERSION", "BRIDGE_ID", "Bridge", "BridgeConfig", "BridgeStats",
           "LogRecord", "PredictionRecord", "PushResult", "SerialLike", "open_serial"]


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
        self.journal = DeviceJournal(config.data_dir / "events.jsonl", config.recent)
        self.predictions = self.journal.predictions  # newest first out; read by other threads
        self.logs = self.journal.logs
        self.pusher = ModelPusher(self.endpoint, self.journal, on_confirmed)
        self.pushes = self.pusher.results
        self._port = port
        self._hello_token: int | None = None
        self._next_hello = 0.0
        self.handshake = threading.Event()

    # ------------------------------------------------------------ other threads
    def push_model(self, blob: bytes, version: int) -> None:
        """Queue a model for the MCU; a newer one replaces one not yet started.
        ValueError here, on the caller's thread, for a model no MCU could be sent."""
        self.pusher.request(blob, version)

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
        self._hello_token = None
        self.pusher.forget_in_flight()
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
        self.pusher.take_requests()
        self.pusher.advance(self.device, now)
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
        self.pusher.device_restarted()
        log.info("bridge: device %s (firmware %#x, capabilities %#x, max payload %d, model "
                 "capacity %d)%s", hello.device_id, hello.firmware_version, hello.capabilities,
                 hello.max_payload, hello.model_capacity, " again" if restarted else "")
        self.journal.record({"kind": "hello", "device": hello.device_id,
                             "firmware": hello.firmware_version,
                             "capabilities": hello.capabilities,
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
        self.journal.prediction(self.device.device_id, p)
        self.stats.predictions += 1

    def _on_log(self, entry: Log) -> None:
        assert self.device is not None
        self.journal.device_log(self.device.device_id, entry)
        self.stats.logs += 1

    def _on_settled(self, event: Delivered | Failed) -> None:
        if event.token == self._hello_token:
            self._hello_token = None
            return
        self.pusher.settled(event)
