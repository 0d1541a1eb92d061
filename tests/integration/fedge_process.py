"""`fedge ...` as a user runs it, in a subprocess that a timeout stops cleanly.

subprocess.run(timeout=...) SIGKILLs the child, so a `fedge demo` that overran would leave
the mosquitto it started running. Here an overrun gets SIGTERM first (the demo unwinds and
stops its broker, as on Ctrl-C), and the test fails with the end of its stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def run_fedge(*args: str, timeout: float, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """Run `python -m fedge.cli *args`; on overrun, stop it gently and fail with its stderr."""
    command = [sys.executable, "-m", "fedge.cli", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, **(env or {})})
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        raise AssertionError(f"`fedge {' '.join(args)}` ran over {timeout:g} s; "
                             f"its stderr ended:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


class LoggedFedge:
    """A `fedge` command left running, its stderr read line by line on a thread, so a
    test can wait for a log line while the process goes on. Stopped with SIGTERM."""

    def __init__(self, *args: str) -> None:
        import threading

        self.args = args
        self.process = subprocess.Popen([sys.executable, "-m", "fedge.cli", *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line holding `text`; AssertionError with the log after `timeout`."""
        import time

        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"`fedge {' '.join(self.args)}` logged no line with "
                                         f"{text!r}; its log:\n" + "\n".join(self.lines[-40:]))
                self._changed.wait(min(left, 0.2))

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code
