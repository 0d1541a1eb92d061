"""What the bridge is configured with, what it keeps of the MCU, and its serial port."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from firmware_bridge.link import DEFAULT_MAX_PAYLOAD


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
