"""Run the fedge CLI (the aggregator) with a memory probe: where its peak RSS goes.

    python -m benchmarks.aggregator_memtrace OUT.json aggregator serve --config X.toml

A benchmark-side debug hook (`benchmarks/fleet.py --trace-memory OUT.json` starts the
aggregator this way); nothing in fedge knows of it. A thread samples every 20 ms: the
process's RSS (anonymous and file-backed, /proc/self/status), glibc's heap
(`mallinfo2`: in use vs kept free), and what fedge's own bounded parts hold then: the
upload assembler (bytes of unfinished uploads, those in memory, chunks spilled to
files, how many uploads are open) and the service inbox (bytes queued), with the
maximum of each over the run. At every new RSS peak it rewrites OUT.json with those
figures, so the file describes the peak even if the process is killed. With
FEDGE_TRACEMALLOC=1 the Python allocations are traced too (slower) and the top
allocation sites at the peak are written as well.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

# imported here, not in the sampling thread: two threads importing one package at once
# can each see it half initialised
from edge_client.shared.inbox import Inbox
from edge_client.shared.protocol.chunking import Assembler

INTERVAL_S = 0.02
TOP = 15


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, float]:
    """glibc's view: bytes in use, kept free inside the heap, and mmapped chunks (MB)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    mb = 2**20
    return {"heap_in_use_mb": round(info.uordblks / mb, 1),
            "heap_free_mb": round(info.fordblks / mb, 1),
            "heap_arena_mb": round(info.arena / mb, 1),
            "mmapped_mb": round(info.hblkhd / mb, 1), "mmapped_chunks": info.hblks}


def _status() -> dict[str, float]:
    wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in wanted:
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def _find_parts() -> tuple[object | None, object | None]:
    """The aggregator's upload assembler and service inbox, among the live objects."""
    assembler = inbox = None
    for obj in gc.get_objects():
        if isinstance(obj, Assembler) and obj.max_payload > 1_000_000:  # the uploads'
            assembler = obj
        elif isinstance(obj, Inbox) and obj._source_of is not None:  # the service's
            inbox = obj
    return assembler, inbox


def _fedge_parts(assembler: Any, inbox: Any) -> dict[str, float]:
    """What the assembler and the inbox hold now."""
    out: dict[str, float] = {}
    if assembler is not None:
        out["assembler_held_mb"] = round(assembler.pending_bytes() / 2**20, 1)
        out["assembler_in_memory_mb"] = round(assembler.memory_held() / 2**20, 1)
        out["assembler_spilled_chunks"] = assembler.spilled
        out["assembler_reserved_mb"] = round(assembler.reserved_bytes() / 2**20, 1)
        out["assembler_open"] = assembler.open_count()
        out["assembler_evicted"] = assembler.evicted
    if inbox is not None:
        out["inbox_held_mb"] = round(inbox.held_bytes / 2**20, 1)
        out["inbox_count"] = inbox.qsize()
    return out


class Probe:
    """Records the figures at the RSS peak, at the peak of glibc's heap in use and (when
    tracing) at the peak of traced Python memory, with its top allocation sites."""

    def __init__(self, out: Path, trace: bool) -> None:
        self.out = out
        self.trace = trace
        self.maxima: dict[str, float] = {}
        self.peaks: dict[str, dict] = {}

    def run(self) -> None:
        assembler = inbox = None
        while True:
            time.sleep(INTERVAL_S)
            if assembler is None or inbox is None:
                assembler, inbox = _find_parts()
            figures = {"at_s": round(time.monotonic() - STARTED, 2), **_status(),
                       **_mallinfo(), **_fedge_parts(assembler, inbox)}
            if self.trace:
                figures["tracemalloc_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
            changed = False
            for peak, key in (("at_rss_peak", "VmRSS"), ("at_heap_peak", "heap_in_use_mb"),
                              ("at_traced_peak", "tracemalloc_mb")):
                if key in figures and figures[key] > self.peaks.get(peak, {}).get(key, 0.0):
                    self.peaks[peak] = dict(figures)
                    changed = True
                    if peak == "at_traced_peak":
                        self.peaks[peak]["top"] = _top()
            for key, value in figures.items():
                self.maxima[key] = max(self.maxima.get(key, 0.0), value)
            if changed:
                self.write()

    def write(self) -> None:
        self.out.write_text(json.dumps({**self.peaks, "maxima": self.maxima,
                                        "env": {k: v for k, v in os.environ.items()
                                                if k.startswith("MALLOC_")}}, indent=1))


def _top() -> list[str]:
    snapshot = tracemalloc.take_snapshot()
    return [f"{s.size / 2**20:.1f} MB {s.count} blocks {s.traceback.format()[-1].strip()}"
            for s in snapshot.statistics("lineno")[:TOP]]


STARTED = time.monotonic()


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    trace = os.environ.get("FEDGE_TRACEMALLOC") == "1"
    if trace:
        tracemalloc.start(8)
    probe = Probe(out, trace)
    threading.Thread(target=probe.run, daemon=True, name="memtrace").start()
    from fedge.cli import main as fedge_main

    try:
        code = fedge_main(argv)
    finally:
        probe.write()
    sys.exit(code)


if __name__ == "__main__":
    main()
