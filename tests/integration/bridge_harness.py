"""Real serial plumbing for the bridge tests: the null modem (two pseudo-terminals and
a relay that can corrupt, drop or rewrite frames) and the gcc-built MCU simulator.

    bridge (pyserial) <-> pty A <-> relay thread <-> pty B <-> mcu_sim (C, fedge_link.c)
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_bridge.firmware import build_program, find_compiler
from firmware_bridge.null_modem import NullModem, frame_of

__all__ = ["McuSim", "NullModem", "build_or_skip", "frame_of", "wait_until", "write_samples"]


def build_or_skip(name: str, out_dir: Path) -> Path:
    if find_compiler() is None:
        pytest.skip("gcc not found: the C reference cannot be built "
                    "(scripts/setup.sh installs gcc; or apt-get install gcc)")
    return build_program(name, out_dir)


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
