"""What limit a local broker likely hit: mosquitto's open-file limit, read from /proc.

With systemd's stock LimitNOFILE (1,024) mosquitto stops accepting clients near 1,000
connections: the rest, the aggregator too, see "Unspecified error" or a closed socket,
and nothing else says why. When the broker runs on this machine, its process's limits
are readable in /proc/<pid>/limits (its open files too, when it runs as our user), so
the aggregator names the limit at start and in its waiting line while it cannot connect
(docs/gateway.md, "Fleets"). A broker elsewhere gets the general hint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aggregator.service")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")
SPARE_FILES = 24  # what mosquitto keeps open besides clients: listeners, logs, stdio
LOOK_AGAIN_S = 10.0
_LISTEN = "0A"  # a socket's state in /proc/net/tcp: listening
FLEET_HINT = ("`fedge aggregator broker-config --fleet N` writes mosquitto settings and a "
              "systemd drop-in with LimitNOFILE for N devices (docs/gateway.md#fleets)")


@dataclass(frozen=True)
class BrokerProcess:
    """A local mosquitto and its open-file limit."""

    pid: int
    max_files: int | None  # the soft limit; None: unlimited
    open_files: int | None  # None: not ours to count (another user's process)

    @property
    def max_clients(self) -> int | None:
        return None if self.max_files is None else max(0, self.max_files - SPARE_FILES)

    @property
    def full(self) -> bool:
        return (self.max_files is not None and self.open_files is not None
                and self.open_files >= self.max_files - 1)


def find_local_broker(host: str, port: int, proc: Path = Path("/proc")) -> BrokerProcess | None:
    """The mosquitto listening on `port` here (or the only mosquitto running), or None."""
    if host not in LOCAL_HOSTS:
        return None
    pids = [pid for pid in _pids(proc) if _read(proc / str(pid) / "comm") == "mosquitto"]
    if not pids:
        return None
    sockets = _listening_inodes(proc, port)
    owner = next((pid for pid in pids if _holds(proc / str(pid), sockets)), None)
    if owner is None and len(pids) == 1:
        owner = pids[0]
    if owner is None:
        return None
    return BrokerProcess(owner, _max_open_files(proc / str(owner)), _count_fds(proc / str(owner)))


def describe(broker: BrokerProcess | None, devices: int) -> tuple[bool, str]:
    """(whether it looks like the cause, a one-line description) for `devices` known."""
    if broker is None:
        return False, ("a broker at its open-file limit (LimitNOFILE; 1,024 by default "
                       "under systemd) refuses clients past about 1,000; " + FLEET_HINT)
    if broker.max_files is None:
        return False, f"mosquitto (pid {broker.pid}) has no open-file limit"
    now = f", {broker.open_files} open now" if broker.open_files is not None else ""
    tight = broker.full or devices + 1 > (broker.max_clients or 0)
    line = (f"mosquitto (pid {broker.pid}) may keep {broker.max_files} files open{now}: "
            f"about {broker.max_clients} clients at most")
    if broker.full:
        line += "; it is at that limit"
    if tight:
        line += f" ({devices} devices known); raise its LimitNOFILE: {FLEET_HINT}"
    return tight, line


def say_at_start(host: str, port: int, devices: int, proc: Path = Path("/proc")) -> None:
    """One line about the broker's limits: a WARNING when they look too low."""
    broker = find_local_broker(host, port, proc)
    tight, line = describe(broker, devices)
    if broker is None:
        log.info("aggregator: the broker's limits are not visible from here: %s", line)
    else:
        (log.warning if tight else log.info)("aggregator: broker limits: %s", line)


class LimitHint:
    """The waiting line's hint while the aggregator cannot connect; /proc is read at
    most every LOOK_AGAIN_S."""

    def __init__(self, host: str, port: int, devices: Callable[[], int],
                 proc: Path = Path("/proc")) -> None:
        self.host, self.port, self.devices, self.proc = host, port, devices, proc
        self._line = ""
        self._at: float | None = None

    def __call__(self) -> str:
        now = time.monotonic()
        if self._at is None or now - self._at >= LOOK_AGAIN_S:
            self._at = now
            self._line = describe(find_local_broker(self.host, self.port, self.proc),
                                  self.devices())[1]
        return self._line


# ------------------------------------------------------------------ /proc
def _pids(proc: Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    except OSError:
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _listening_inodes(proc: Path, port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        for row in _read(proc / "net" / table).splitlines()[1:]:
            cols = row.split()
            if len(cols) > 9 and cols[3] == _LISTEN and cols[1].rsplit(":", 1)[-1] == \
                    f"{port:04X}":
                inodes.add(f"socket:[{cols[9]}]")
    return inodes


def _holds(pid_dir: Path, sockets: set[str]) -> bool:
    try:
        return any(os.readlink(fd) in sockets for fd in (pid_dir / "fd").iterdir())
    except OSError:
        return False


def _count_fds(pid_dir: Path) -> int | None:
    try:
        return sum(1 for _ in (pid_dir / "fd").iterdir())
    except OSError:
        return None


def _max_open_files(pid_dir: Path) -> int | None:
    for row in _read(pid_dir / "limits").splitlines():
        if row.startswith("Max open files"):
            soft = row[len("Max open files"):].split()[0]
            return None if soft == "unlimited" or not soft.isdigit() else int(soft)
    return None
