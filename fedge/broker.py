"""Start an MQTT broker on 127.0.0.1 for the demo and for tests.

Two kinds, same methods (``host``, ``port``, ``kind``, ``stop()``, context manager):

* ``MosquittoBroker`` runs the system ``mosquitto`` binary as a child process. It is the
  reference broker: MQTT 5 and 3.1.1, real outages via ``restart()``.
* ``EmbeddedBroker`` runs amqtt in a background thread for machines without mosquitto.
  A demo fallback only; amqtt 0.12 differs from mosquitto in ways clients must tolerate:
  MQTT 3.1.1 only; anonymous sessions keep no offline QoS 1 queue; a new connection is sent
  retained messages matching *any* client's subscriptions (so filter by topic on receipt);
  QoS is not downgraded to the publisher's; keepalive expiry never disconnects a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

MOSQUITTO_FALLBACK_PATH = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 20

MOSQUITTO_CONF_TEMPLATE = """\
listener {port} {host}
allow_anonymous true
persistence false
max_queued_messages 10000
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
"""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for an unused TCP port (racy, but fine on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    """Locate the mosquitto binary; Debian puts it in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    fallback = Path(MOSQUITTO_FALLBACK_PATH)
    return str(fallback) if fallback.is_file() else None


def _require_mosquitto() -> str:
    executable = find_mosquitto()
    if executable is None:
        raise RuntimeError("mosquitto not found: apt-get install mosquitto")
    return executable


def amqtt_available() -> bool:
    """amqtt is an optional (demo) dependency, so check before promising an embedded broker."""
    return importlib.util.find_spec("amqtt") is not None


def _port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last lines of a broker log, so start failures explain themselves."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class BrokerHandle(ABC):
    """Common surface of both brokers: ``host``, ``port``, ``kind`` and an idempotent stop."""

    host: str
    port: int
    kind: str

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker; calling it again does nothing."""

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for logs and CLI output."""
        return f"mqtt://{self.host}:{self.port}"

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class MosquittoBroker(BrokerHandle):
    """The system mosquitto as a child process we own (and only ever signal by its PID)."""

    host: str
    port: int
    workdir: Path
    executable: str
    extra_conf: str = ""
    given_conf: Path | None = None  # a complete config of the caller's (TLS, ACL): used as is
    kind: str = field(default="mosquitto", init=False)
    _owns_workdir: bool = field(default=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        port: int | None = None,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        extra_conf: str = "",
    ) -> MosquittoBroker:
        """Write a config into workdir, launch mosquitto and wait until it accepts connections."""
        executable = _require_mosquitto()
        owns = workdir is None
        directory = (Path(tempfile.mkdtemp(prefix="fedge-mosquitto-")) if workdir is None
                     else Path(workdir))
        broker = cls(
            host=host,
            port=port or free_port(host),
            workdir=directory,
            executable=executable,
            extra_conf=extra_conf,
            _owns_workdir=owns,
        )
        return broker._launched()

    @classmethod
    def start_with_conf(cls, conf: Path, port: int, host: str = "127.0.0.1") -> MosquittoBroker:
        """Launch mosquitto on a config written elsewhere (`fedge aggregator broker-config`);
        `host` and `port` must be its listener's, so we can tell when it is up."""
        broker = cls(host=host, port=port, workdir=Path(conf).parent,
                     executable=_require_mosquitto(), given_conf=Path(conf))
        return broker._launched()

    def _launched(self) -> MosquittoBroker:
        """Start it, or clean up (our process, our workdir) and re-raise."""
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def conf_path(self) -> Path:
        return self.given_conf or self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """mosquitto's stderr log; appended across restarts."""
        return self.workdir / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the process and remove the workdir if we created it."""
        self._terminate()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port: lets tests simulate a broker outage."""
        self._terminate()
        self._launch()

    def _write_conf(self) -> None:
        if self.given_conf is not None:
            return
        # log_dest stderr (captured into log_path by us) rather than `log_dest file`: when run as
        # root, mosquitto 2.x drops to the `mosquitto` user and cannot open files in our workdir.
        conf = MOSQUITTO_CONF_TEMPLATE.format(port=self.port, host=self.host)
        if self.extra_conf:
            conf += self.extra_conf.rstrip("\n") + "\n"
        self.conf_path.write_text(conf)

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Poll the port; fail fast with the log if mosquitto exits or never listens."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._exit_code()
            if code is not None:
                self._fail(f"mosquitto exited with code {code}")
            # Re-check after the probe: if another process owns the port, ours exits on bind.
            if _port_open(self.host, self.port) and self._exit_code() is None:
                return
            time.sleep(0.05)
        self._fail(f"mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S}s")

    def _exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _fail(self, reason: str) -> None:
        self._terminate()
        raise RuntimeError(f"{reason}; log {self.log_path}:\n{_log_tail(self.log_path)}")

    def _terminate(self) -> None:
        """SIGTERM our own child, wait, SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    """Minimal amqtt config: one TCP listener, anonymous auth, none of the chatty plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: the default set adds packet/event loggers and a $SYS publisher
        # (which also raises a psutil DeprecationWarning).
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _quiet_amqtt_logging() -> None:
    """amqtt logs every connection at INFO; keep warnings unless the app configured it."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


async def _start_amqtt(config: dict[str, Any]) -> Any:
    """Build the Broker inside its loop: its constructor grabs the running loop."""
    from amqtt.broker import Broker

    broker = Broker(config)
    await broker.start()
    return broker


async def _stop_amqtt(broker: Any) -> None:
    """Shut amqtt down, then cancel what it leaves behind so the loop closes quietly."""
    try:
        await broker.shutdown()
    finally:
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)


@dataclass
class EmbeddedBroker(BrokerHandle):
    """amqtt on its own asyncio loop in a daemon thread, so callers stay synchronous."""

    host: str
    port: int
    kind: str = field(default="embedded", init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _broker: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, port: int | None = None, host: str = "127.0.0.1") -> EmbeddedBroker:
        """Start amqtt and return once its listener is bound."""
        if not amqtt_available():
            raise RuntimeError("amqtt not installed: pip install 'fedge[demo]'")
        _quiet_amqtt_logging()
        broker = cls(host=host, port=port or free_port(host))
        broker._run()
        return broker

    def stop(self) -> None:
        """Shut the broker down on its loop, then stop the loop and join the thread."""
        loop, thread, broker = self._loop, self._thread, self._broker
        self._loop, self._thread, self._broker = None, None, None
        if loop is None:
            return
        try:
            if broker is not None and thread is not None and thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(_stop_amqtt(broker), loop)
                future.result(timeout=STOP_TIMEOUT_S)
        finally:
            self._stop_loop(loop, thread)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop_forever, args=(loop,), name=f"amqtt-{self.port}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(
            _start_amqtt(_amqtt_config(self.host, self.port)), loop
        )
        try:
            self._broker = future.result(timeout=START_TIMEOUT_S)
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"embedded amqtt broker failed to start on {self.host}:{self.port}: {exc}"
            ) from exc

    @staticmethod
    def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=STOP_TIMEOUT_S)
        if thread is None or not thread.is_alive():
            loop.close()


def _run_loop_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def start_broker(prefer: str = "auto") -> MosquittoBroker | EmbeddedBroker:
    """Start the best broker available: mosquitto if installed, else embedded amqtt.

    ``prefer`` may force "mosquitto" or "embedded"; a forced kind that is unavailable raises
    RuntimeError rather than silently falling back.
    """
    if prefer == "mosquitto":
        return MosquittoBroker.start()
    if prefer == "embedded":
        return EmbeddedBroker.start()
    if prefer != "auto":
        raise ValueError(f"prefer must be 'auto', 'mosquitto' or 'embedded', not {prefer!r}")
    if find_mosquitto() is not None:
        return MosquittoBroker.start()
    if amqtt_available():
        return EmbeddedBroker.start()
    raise RuntimeError(
        "no MQTT broker available: apt-get install mosquitto, or pip install 'fedge[demo]'"
    )
