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
