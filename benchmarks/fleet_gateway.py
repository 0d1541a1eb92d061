"""The gateway side of benchmarks/fleet.py: a private mosquitto sized for a fleet, the
aggregator's TOML, its memory, and what its store holds after the run."""

from __future__ import annotations

import math
import os
import resource
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol.chunking import chunk_count

FD_MARGIN = 1024  # the aggregator, the raw pair, mosquitto's own files
CHUNK_SIZE = 65536
# top-1% + 4-bit + zlib; no error feedback (the simulated devices keep no residual)
COMPRESSED = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4", block_size=256,
                         error_feedback=False, compress="zlib")


@dataclass(frozen=True)
class Fleet:
    """What is run: the flags of benchmarks/fleet.py."""

    devices: int
    invited: int
    rounds: int
    payload: str  # "compressed" or "dense"
    mode: str  # "sync" or "async"
    ingest_workers: int = 1
    sign: bool = False
    concurrency: int = 0  # async: [async] concurrency (0: no bound)
    model_parameters: int = 64 * 1333 + 1333 + 1333 * 10 + 10

    def update_bytes_estimate(self) -> int:
        return 4 * self.model_parameters + 4096 if self.payload == "dense" else 8192

    def chunks_per_update(self) -> int:
        return chunk_count(self.update_bytes_estimate(), CHUNK_SIZE)


def mosquitto_conf(fleet: Fleet, port: int) -> str:
    """Queues that hold a whole round of chunks (twice over) for the aggregator."""
    queued = max(10_000, 2 * fleet.invited * fleet.chunks_per_update() + fleet.devices)
    return "\n".join([
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        f"max_queued_messages {queued}",
        "max_inflight_messages 200",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "",
    ])


def aggregator_toml(fleet: Fleet, port: int, db_path: Path) -> str:
    """Sync rounds inviting `invited` devices, or async with a buffer of that many."""
    upload_bytes = max(256 * 2**20, 2 * fleet.invited * fleet.update_bytes_estimate())
    lines = [
        'federation = "fleet"', 'host = "127.0.0.1"', f"port = {port}",
        f'db_path = "{db_path}"', f'mode = "{fleet.mode}"', f"rounds = {fleet.rounds}",
        f"chunk_size = {CHUNK_SIZE}", "presence_settle_s = 2.0", "keepalive_s = 60",
    ]
    lines += [
        "", "[train]", "epochs = 1",
        "", "[sync]", f"target_updates = {fleet.invited}", "over_selection = 0.0",
        "round_timeout_s = 600", "min_fraction = 1.0", "wait_for_devices_s = 60",
        "", "[async]", f"buffer_size = {fleet.invited}", "max_staleness = 10",
        f"concurrency = {fleet.concurrency}",
        "", "[presence]", f"max_newcomers = {max(1000, fleet.devices)}",
        "", "[limits]", f"open_uploads = {max(1000, 2 * fleet.invited)}",
        # a round of unfinished uploads, twice over; past upload_memory_bytes they wait
        # in files, so this bounds disk, not memory
        f"open_upload_bytes = {upload_bytes}",
        "", "[ingest]", f"workers = {fleet.ingest_workers}",
    ]
    if fleet.sign:
        lines += ["", "[security]", "enabled = true",
                  f'key_file = "{db_path.with_name("aggregator.key")}"']
    if fleet.payload == "compressed":
        lines += ["", "[uplink]"] + [f"{key} = {_toml_value(value)}"
                                     for key, value in COMPRESSED.to_wire().items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def start_mosquitto(executable: str, conf: Path, log: Path, fds: int) -> subprocess.Popen:
    """mosquitto with an open-file limit for this fleet, set in its own process only."""
    def raise_limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = fds if hard == resource.RLIM_INFINITY else min(fds, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    with log.open("wb") as out:
        return subprocess.Popen([executable, "-c", str(conf)], stdout=out, stderr=out,
                                preexec_fn=raise_limit)


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on port {port} within {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_file_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


@dataclass
class MemoryWatch:
    """Samples a process's resident memory; VmHWM is the kernel's own peak."""

    pid: int
    interval_s: float = 0.2
    peak_kb: int = 0
    cpu_s: float = 0.0  # user + system CPU time, as last sampled (this process only)
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemoryWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
                stat = Path(f"/proc/{self.pid}/stat").read_text()
            except OSError:
                return
            ticks = stat.rsplit(")", 1)[1].split()  # fields from the third, state, on
            self.cpu_s = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
            for line in text.splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    kb = int(line.split()[1])
                    self.peak_kb = max(self.peak_kb, kb)
                    if line.startswith("VmRSS:"):
                        self.samples.append(kb)

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return round(self.peak_kb / 1024, 1)


@dataclass(frozen=True)
class StoreFacts:
    stored: set[tuple[str, str, str]]  # (device, task, nonce)
    stored_by_state: dict[str, int]
    round_s: list[float]  # per version: task opened (or previous version) -> version made
    ingest_s: list[float]  # per task: opened -> its last update received in time
    burst_s: list[float]  # per task: its first -> its last update received in time
    updates_in_rounds: int  # sync: stored in time; async: received while versions were made
    span_s: float  # first task opened -> last version made
    versions: int
    rejections: int
    stale_rejections: int


def read_store(db_path: Path, mode: str) -> StoreFacts:
    """What the aggregator's store holds once it has stopped."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        stored = {(d, t, n) for d, t, n in db.execute(
            "SELECT device_id, task_id, nonce FROM updates")}
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM updates GROUP BY state"))
        made = dict(db.execute("SELECT version, created_at FROM models"))
        tasks = list(db.execute("SELECT task_id, model_version, opened_at FROM tasks "
                                "WHERE state != 'aborted' ORDER BY opened_at"))
        in_time = "FROM updates WHERE state != 'late' GROUP BY task_id"
        last = dict(db.execute(f"SELECT task_id, MAX(received_at) {in_time}"))
        first = dict(db.execute(f"SELECT task_id, MIN(received_at) {in_time}"))
        counts = dict(db.execute(f"SELECT task_id, COUNT(*) {in_time}"))
        received = [at for (at,) in db.execute("SELECT received_at FROM updates")]
        rejections = db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        stale = db.execute("SELECT COUNT(*) FROM rejections WHERE reason LIKE "
                           "'%stale%'").fetchone()[0]
    finally:
        db.close()
    opened: dict[int, float] = {}
    for _, version, at in tasks:
        opened.setdefault(version, at)
    round_s = [made[v] - max(opened.get(v - 1, made[v - 1]), made[v - 1])
               for v in sorted(made) if v >= 1 and v - 1 in made]
    ingest = [(last[t] - at, counts[t]) for t, _, at in tasks if t in last]
    burst = [last[t] - first[t] for t, _, _ in tasks if t in last]
    start, end = (tasks[0][2] if tasks else 0.0), max(made.values())
    in_span = sum(1 for at in received if start <= at <= end)
    in_rounds = sum(c for _, c in ingest) if mode == "sync" else in_span
    return StoreFacts(stored, by_state, round_s, [s for s, _ in ingest], burst, in_rounds,
                      max(0.0, end - start), len(made) - 1, rejections, stale)


def fds_for(fleet: Fleet) -> int:
    return fleet.devices + FD_MARGIN


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 and math.isfinite(a) else 0.0
