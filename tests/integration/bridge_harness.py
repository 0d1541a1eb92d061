"""Real serial plumbing for the bridge tests: two pseudo-terminals joined by a relay
that can corrupt, drop or rewrite frames, and the gcc-built MCU simulator on one end.

    bridge (pyserial) <-> pty A <-> relay thread <-> pty B <-> mcu_sim (C, fedge_link.c)
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_bridge.firmware import build_program, find_compiler
from firmware_bridge.link import Frame, FrameReader, LinkError

Tamper = Callable[[bytes], list[bytes]]  # one whole frame in, what the wire delivers


def build_or_skip(name: str, out_dir: Path) -> Path:
    if find_compiler() is None:
        pytest.skip("gcc not found: the C reference cannot be built "
                    "(scripts/setup.sh installs gcc; or apt-get install gcc)")
    return build_program(name, out_dir)


def frame_of(wire: bytes) -> Frame | None:
    """The frame in one delimited piece of wire bytes, None if it does not decode."""
    reader = FrameReader()
    reader.feed(wire)
    try:
        return reader.next_frame()
    except LinkError:
        return None


class PtyWire:
    """Two ptys and a relay; `tamper['to_mcu']` / `tamper['to_bridge']` see each frame."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.bridge_master, bridge_slave = self._pty()
        self.mcu_master, mcu_slave = self._pty()
        self.bridge_port = os.ttyname(bridge_slave)
        self.mcu_port = os.ttyname(mcu_slave)
        self.tamper: dict[str, Tamper] = {"to_mcu": lambda f: [f], "to_bridge": lambda f: [f]}
        self.frames: dict[str, list[Frame | None]] = {"to_mcu": [], "to_bridge": []}
        self._buffers = {"to_mcu": bytearray(), "to_bridge": bytearray()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="pty-relay", daemon=True)
        self._thread.start()

    def _pty(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a serial line
        os.set_blocking(master, False)
        self._fds += [master, slave]  # the slave stays open here, so the master never EIOs
        return master, slave

    def _relay(self) -> None:
        routes = {self.bridge_master: ("to_mcu", self.mcu_master),
                  self.mcu_master: ("to_bridge", self.bridge_master)}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(routes), [], [], 0.05)
            for fd in ready:
                direction, dst = routes[fd]
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    continue
                self._pass(direction, data, dst)

    def _pass(self, direction: str, data: bytes, dst: int) -> None:
        buffer = self._buffers[direction]
        buffer += data
        while (end := buffer.find(b"\x00")) >= 0:
            wire = bytes(buffer[:end + 1])
            del buffer[:end + 1]
            self.frames[direction].append(frame_of(wire))
            for piece in self.tamper[direction](wire):
                # nobody reading: the bytes are lost, as on a real line
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(dst, piece)

    def count(self, direction: str, msg_type: int) -> int:
        return sum(1 for f in list(self.frames[direction]) if f is not None
                   and f.type == msg_type)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in self._fds:
            os.close(fd)


class McuSim:
    """The C simulator as a child process; its event lines are collected as they come."""

    def __init__(self, binary: Path, port: str, *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen([str(binary), port, *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"mcu_sim never printed {prefix!r}; it printed "
                             f"{self.lines[-20:]}, stderr {self._stderr()!r}")

    def matching(self, prefix: str) -> list[str]:
        return [line for line in list(self.lines) if line.startswith(prefix)]

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def write_samples(path: Path, rows: list[tuple[int, list[int]]]) -> Path:
    """The simulator's sample file: one 'LABEL V1 V2 ...' line per window."""
    path.write_text("".join(f"{label} {' '.join(str(v) for v in values)}\n"
                            for label, values in rows))
    return path
