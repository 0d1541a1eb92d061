"""Fleet benchmark: one gateway, N devices, rounds inviting K; ingest against the broker.

    cd fedge && .venv/bin/python -m benchmarks.fleet [--devices 300] [--invited 100]
        [--rounds 3] [--payload compressed|dense] [--mode sync|async] [--processes P]

Starts a private mosquitto on a free loopback port with fleet settings (its open-file
limit raised for that process only, max_queued_messages sized to two rounds of chunks),
`fedge aggregator serve` as its own process (stopped once every device has seen the
final task and has its acks) with a generated TOML (the demo model, 100,710 parameters;
sync rounds with target_updates = K, or async with a buffer of K; compressed = top-1% +
q4 + zlib uplink, dense = float32), and N simulated devices in P processes
(benchmarks/fleet_devices.py: one paho client each, one selector loop per process, the
real protocol code; no training, one delta reused with fresh nonces; `--sign` turns
security on and seals updates and statuses). Before the devices connect, the same
mosquitto carries the same update chunks from a plain paho publisher to a plain paho
subscriber: `raw_broker_msgs_per_s` (whole updates per second), the baseline of
`ingest_ratio`; then once more with a subscriber that publishes a small reply per update
(`reply_floor_msgs_per_s`). Devices due to send encode all their updates before they
publish any, as the raw publisher holds its chunks already.

Prints one JSON object. `updates_stored_per_s` is the updates stored in time (not late)
over the rounds' ingest windows (a task's first such update received -> its last, the
raw baseline's window; sync; `updates_per_s_from_task_open` counts from the task's
opening instead), or the updates received from the first task to the last version over
that span (async). `aggregator_cpu_ms_per_update` is the aggregator process's CPU time
over the run per update stored. `--trace-memory FILE` runs the aggregator under
benchmarks/aggregator_memtrace.py and writes where its memory peak goes to FILE.
The aggregator tops invitations up with newcomers on trial, so more than K devices may
be invited; what comes after the round closed is acknowledged "late" and stored, outside
the rate. `lost` counts updates acknowledged but not in the store, plus updates never
acknowledged although resent every `--ack-timeout-s`. Async devices send the update of
the task they started "training" on (`--train-s`), so it may arrive stale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from aggregator.store import Store
from benchmarks.fleet_devices import DeviceSpec, UpdateFactory, delta_like, device_name
from benchmarks.fleet_gateway import (
    CHUNK_SIZE,
    COMPRESSED,
    Fleet,
    MemoryWatch,
    StoreFacts,
    aggregator_toml,
    fds_for,
    free_port,
    mosquitto_conf,
    open_file_limit,
    ratio,
    read_store,
    start_mosquitto,
    wait_port,
)
from benchmarks.fleet_raw import raw_rate
from edge_client.shared.protocol import Task, TrainConfig, encode, split
from fedge.broker import find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 1333, 10]  # the demo model


def sample_chunks(payload: str) -> list[bytes]:
    """The chunks of one update as the devices will send it (for the raw baseline)."""
    codec = COMPRESSED.to_wire() if payload == "compressed" else None
    task = Task(task_id="r1-raw", mode="sync", round=1, model_version=0,
                train=TrainConfig(), codec=codec, chunk_size=CHUNK_SIZE)
    update = UpdateFactory(delta_like(SIZES)).update("dev00000", task)
    return split(encode(update), update.nonce, CHUNK_SIZE)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def start_devices(fleet: Fleet, port: int, processes: int, workdir: Path,
                  args: argparse.Namespace) -> list[tuple[subprocess.Popen, Path]]:
    started = []
    per = -(-fleet.devices // processes)
    for p in range(processes):
        first, count = p * per, min(per, fleet.devices - p * per)
        if count <= 0:
            break
        spec = DeviceSpec(host="127.0.0.1", port=port, federation="fleet", first=first,
                          count=count, sizes=SIZES, train_s=args.train_s,
                          ack_timeout_s=args.ack_timeout_s, time_limit_s=args.time_limit_s,
                          sign=args.sign)
        spec_path, result = workdir / f"devices-{p}.json", workdir / f"outcome-{p}.json"
        spec_path.write_text(json.dumps(spec.__dict__))
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fleet_devices",
                                 str(spec_path), str(result)], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, text=True)
        started.append((proc, result))
    return started


def wait_connected(started: list[tuple[subprocess.Popen, Path]]) -> tuple[int, list[str]]:
    """Devices connected, and each process's public key (when signing)."""
    connected, keys = 0, []
    for proc, _ in started:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, ""):
            line = raw.split()
            if len(line) == 2 and line[0] == "key":
                keys.append(line[1])
            elif len(line) == 2 and line[0] == "connected":
                connected += int(line[1])
                break
    return connected, keys


def enrol(db_path: Path, fleet: Fleet, processes: int, keys: list[str]) -> None:
    """Every device's key in the store, before the aggregator starts (security on)."""
    per = -(-fleet.devices // processes)
    store = Store(db_path)
    try:
        for index in range(fleet.devices):
            store.enroll(device_name(index), keys[index // per])
    finally:
        store.close()


def collect(started: list[tuple[subprocess.Popen, Path]], timeout_s: float) -> dict:
    total: dict = {"sent": 0, "resends": 0, "acks": [], "unacked": [], "connect_failures": 0,
                   "bad_messages": 0, "task_bytes": 0, "finished": 0}
    deadline = time.monotonic() + timeout_s
    for proc, result in started:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=30)
        if not result.exists():
            continue
        outcome = json.loads(result.read_text())
        for key in ("sent", "resends", "connect_failures", "bad_messages", "finished"):
            total[key] += outcome[key]
        total["acks"] += outcome["acks"]
        total["unacked"] += outcome["unacked"]
        total["task_bytes"] = max(total["task_bytes"], outcome["task_bytes"])
    return total


def profile(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy on the aggregator, when installed next to this Python or on PATH."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                      f"{os.environ.get('PATH', '')}")
    if spy is None:
        print("fleet: py-spy not found; no profile", file=sys.stderr)
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--output", str(out),
                             "--format", "raw", "--rate", "50", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summary(fleet: Fleet, devices: dict, facts: StoreFacts, raw_per_s: float,
            rss_mb: float, extra: dict) -> dict:
    kept = [a for a in devices["acks"] if a[3] != "rejected"]
    lost_acked = sum(1 for a in kept if (a[0], a[1], a[2]) not in facts.stored)
    # sync: from each task's first update received to its last (the raw baseline's window
    # too); the window from the task's opening adds the devices' reaction and encoding.
    window = sum(facts.burst_s) if fleet.mode == "sync" else facts.span_s
    stored_per_s = facts.updates_in_rounds / window if window > 0 else 0.0
    opened_window = sum(facts.ingest_s) if fleet.mode == "sync" else facts.span_s
    round_per_s = facts.updates_in_rounds / opened_window if opened_window > 0 else 0.0
    stale = sum(1 for a in devices["acks"] if a[3] == "rejected" and "stale" in a[4])
    return {
        "benchmark": "fleet",
        "devices": fleet.devices, "invited_per_round": fleet.invited, "mode": fleet.mode,
        "concurrency": fleet.concurrency,
        "payload": fleet.payload, "signed": fleet.sign, "rounds": fleet.rounds,
        "versions_made": facts.versions,
        "updates_stored_per_s": round(stored_per_s, 1),
        "updates_per_s_from_task_open": round(round_per_s, 1),
        "raw_broker_msgs_per_s": round(raw_per_s, 1),
        "ingest_ratio": ratio(stored_per_s, raw_per_s),
        "round_s_median": round(statistics.median(facts.round_s), 2) if facts.round_s else None,
        "round_s": [round(s, 2) for s in facts.round_s],
        "aggregator_rss_mb_peak": rss_mb,
        "sent": devices["sent"], "resends": devices["resends"],
        "acked": len(kept), "acked_by_status": _count(a[3] for a in devices["acks"]),
        "stored": len(facts.stored), "stored_by_state": facts.stored_by_state,
        "lost": lost_acked + len(devices["unacked"]),
        "rejected_stale": stale, "rejections_stored": facts.rejections,
        "task_bytes": devices["task_bytes"], "ingest_workers": fleet.ingest_workers,
        "connected": extra.pop("connected"), "connect_failures": devices["connect_failures"],
        "bad_messages": devices["bad_messages"], **extra,
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def run(fleet: Fleet, args: argparse.Namespace, workdir: Path) -> dict:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("fleet: mosquitto not found (apt-get install mosquitto)")
    load_before = os.getloadavg()
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(fleet, port))
    broker = start_mosquitto(mosquitto, conf, workdir / "mosquitto.log", fds_for(fleet))
    started: list[tuple[subprocess.Popen, Path]] = []
    aggregator: subprocess.Popen | None = None
    try:
        wait_port(port, broker)
        chunks = sample_chunks(fleet.payload)
        raw_updates = args.raw_updates or (3000 if fleet.payload == "compressed" else 300)
        raw = raw_rate("127.0.0.1", port, chunks, raw_updates, workdir)
        reply = raw_rate("127.0.0.1", port, chunks, raw_updates, workdir, reply=True)
        began = time.monotonic()
        started = start_devices(fleet, port, args.processes, workdir, args)
        connected, keys = wait_connected(started)
        if connected == 0:
            raise SystemExit("fleet: no simulated device connected (see the errors above)")
        connect_s = time.monotonic() - began
        toml = workdir / "aggregator.toml"
        for old in workdir.glob("aggregator.sqlite3*"):  # a kept folder: start afresh
            old.unlink()
        if fleet.sign:
            enrol(workdir / "aggregator.sqlite3", fleet, len(started), keys)
        toml.write_text(aggregator_toml(fleet, port, workdir / "aggregator.sqlite3"))
        with (workdir / "aggregator.log").open("wb") as log:
            probe = (["benchmarks.aggregator_memtrace", args.trace_memory] if args.trace_memory
                     else ["fedge"])
            aggregator = subprocess.Popen(
                [sys.executable, "-m", *probe, "aggregator", "serve", "--config", str(toml)],
                cwd=ROOT, env=_env(), stdout=log, stderr=log)
        memory = MemoryWatch(aggregator.pid).start()
        spy = profile(aggregator.pid, Path(args.profile)) if args.profile else None
        # The devices stop once they have seen the final task and every update of theirs
        # is acknowledged (late ones too); only then is the aggregator stopped.
        devices = collect(started, timeout_s=args.time_limit_s)
        aggregator.terminate()
        try:
            aggregator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            aggregator.kill()
            aggregator.wait()
        rss_mb = memory.stop()
        extra_cpu = {"aggregator_cpu_s": round(memory.cpu_s, 1)}
        if spy is not None:
            spy.wait(timeout=60)
        facts = read_store(workdir / "aggregator.sqlite3", fleet.mode)
        extra = {"connected": connected, "connect_s": round(connect_s, 1),
                 "aggregator_exit": aggregator.returncode,
                 "raw_chunks_per_update": raw.chunks_per_update,
                 "update_bytes": raw.update_bytes,
                 "raw_broker_chunks_per_s": round(raw.updates_per_s * raw.chunks_per_update, 1),
                 "reply_floor_msgs_per_s": round(reply.updates_per_s, 1),
                 "reply_floor_ratio": ratio(reply.updates_per_s, raw.updates_per_s),
                 "mosquitto_open_files": open_file_limit(broker.pid),
                 "device_processes": len(started), **extra_cpu}
        result = summary(fleet, devices, facts, raw.updates_per_s, rss_mb, extra)
        result["ingest_ratio_to_reply_floor"] = ratio(result["updates_stored_per_s"],
                                                      reply.updates_per_s)
        # the whole run's CPU (start-up and idle waits included) per update stored
        result["aggregator_cpu_ms_per_update"] = round(
            1000 * memory.cpu_s / max(1, len(facts.stored)), 2)
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
        if aggregator is not None and aggregator.poll() is None:
            aggregator.terminate()
        broker.terminate()
        broker.wait(timeout=10)
    result["loadavg"] = {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]}
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--invited", type=int, default=100,
                        help="sync: devices invited per round; async: buffer size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload", choices=("compressed", "dense"), default="compressed")
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument("--processes", type=int, default=0,
                        help="device processes; 0: one per 2,500 devices, at most 2")
    parser.add_argument("--ingest-workers", type=int, default=1,
                        help="[ingest] workers: processes that verify and decode updates")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="async: invite at most C devices at a time ([async] concurrency)")
    parser.add_argument("--sign", action="store_true",
                        help="security on: devices sign updates and statuses (enrolled)")
    parser.add_argument("--train-s", type=float, default=0.0,
                        help="simulated training time per update (x0.5-1.5)")
    parser.add_argument("--ack-timeout-s", type=float, default=30.0)
    parser.add_argument("--raw-updates", type=int, default=0,
                        help="updates sent for the raw baseline; 0: 3,000 / 300 dense")
    parser.add_argument("--time-limit-s", type=float, default=900.0)
    parser.add_argument("--profile", help="write a py-spy profile of the aggregator here")
    parser.add_argument("--trace-memory",
                        help="write where the aggregator's RSS peak goes to this JSON file "
                             "(benchmarks/aggregator_memtrace.py; FEDGE_TRACEMALLOC=1: "
                             "Python allocation sites too)")
    parser.add_argument("--keep", help="keep logs, store and configs in this folder")
    args = parser.parse_args(argv)
    if args.devices < 1 or not 1 <= args.invited <= args.devices or args.rounds < 1:
        parser.error("need devices >= 1, 1 <= invited <= devices and rounds >= 1")
    if args.processes <= 0:
        args.processes = min(2, -(-args.devices // 2500))
    return args


def _interrupted(*_: object) -> None:
    raise SystemExit("fleet: stopped by a signal")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    fleet = Fleet(args.devices, args.invited, args.rounds, args.payload, args.mode,
                  args.ingest_workers, sign=args.sign, concurrency=args.concurrency)
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="fedge-fleet-"))
    try:
        print(json.dumps(run(fleet, args, workdir), indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
