"""Flood benchmark: one broker login against `fedge aggregator serve`, with an honest
federation beside it. Loopback only; about two to three minutes.

    .venv/bin/python benchmarks/abuse.py [--rounds 5] [--phase-s 10]

A private mosquitto (the gateway settings of fedge/broker.py), `fedge aggregator serve`
and three `fedge device` processes (digits, MLP 64-16-10, plain mode, sync rounds of 3)
run as subprocesses. The honest round time is measured first without an attack, then
during each flood of benchmarks/abuse_attacks.py (its own process): junk on update topics
(60 KB, and tiny), never-finished uploads from 5,000 device ids, whole junk uploads from
one device (each a rejection), and fake "online, eligible" statuses. The unattacked phase
runs until `rounds` versions are made after its first (which straddles the start); each
attack runs for `phase_s` and counts the versions made meanwhile (but the first); then the
attacker stops, and the benchmark waits for the aggregator to drain its backlog and for
the next honest version (at most 40 s). Devices resend an unacknowledged update after 10 s
(`ack_timeout_s`): the broker drops what overflows its queue for the aggregator. Round
times are the aggregator's own (`round_wall_s` of each version, in the store). Prints one
JSON object: messages tried, crashes (the aggregator must still be alive and serving),
the aggregator's RSS (VmRSS, VmHWM from /proc), honest round times and their ratio to the
unattacked median, the final accuracy, and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.broker import MosquittoBroker
from fedge.datasets import load_digits

FEDERATION = "abuse"
DEVICES = 3
ATTACK_ORDER = ("junk_large", "junk_small", "unfinished_uploads", "rejected_updates",
                "fake_statuses")  # statuses last: ghosts stay invitable (retained)
ATTACKER = Path(__file__).with_name("abuse_attacks.py")
RECOVERY_S = 40.0  # after an attack: wait this long at most for the next honest version


@dataclass
class Fleet:
    aggregator: subprocess.Popen
    devices: list[subprocess.Popen]
    db: Path


def _write_configs(work: Path, port: int, limits: str) -> Path:
    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    np.savez(work / "heldout.npz", x=x[-300:], y=y[-300:])
    for i in range(DEVICES):
        np.savez(work / f"data{i}.npz", x=x[:-300][i::DEVICES], y=y[:-300][i::DEVICES])
        (work / f"device{i}.toml").write_text(
            f'device_id = "dev-{i}"\nfederation = "{FEDERATION}"\nport = {port}\n'
            f'state_dir = "{work / f"state{i}"}"\nexit_when_done = false\n'
            f'ack_timeout_s = 10\n'
            f'[model]\nsizes = [64, 16, 10]\n[data]\npath = "{work / f"data{i}.npz"}"\n'
            f'[eligibility]\nenabled = false\n')
    db = work / "aggregator.sqlite3"
    (work / "aggregator.toml").write_text(
        f'federation = "{FEDERATION}"\nport = {port}\nrounds = 0\ndb_path = "{db}"\n'
        f'[model]\nsizes = [64, 16, 10]\n[train]\nepochs = 1\n'
        f'[sync]\ntarget_updates = {DEVICES}\nround_timeout_s = 10\n'
        f'[evaluation]\ndata = "{work / "heldout.npz"}"\n{limits}')
    return db


def _fedge(work: Path, *args: str, log: str) -> subprocess.Popen:
    with (work / log).open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedge.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT)


def _versions(db: Path) -> list[dict]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute("SELECT version, created_at, info FROM models ORDER BY version")
            return [{"version": v, "created_at": t, **json.loads(i)} for v, t, i in rows]
    except sqlite3.OperationalError:
        return []  # not created yet


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(pid: int, limit_s: float) -> float:
    """Wait until the aggregator is nearly idle (its backlog handled); seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        before = _cpu_s(pid)
        time.sleep(0.5)
        if _cpu_s(pid) - before < 0.1:  # under 20 % of a core
            break
    return round(time.monotonic() - began, 1)


def _phase(fleet: Fleet, kind: str | None, port: int, rounds: int, limit_s: float) -> dict:
    start = len(_versions(fleet.db))
    attacker = None if kind is None else subprocess.Popen(
        [sys.executable, str(ATTACKER), kind, "--port", str(port), "--federation",
         FEDERATION], stdout=subprocess.PIPE, text=True)
    began = time.monotonic()
    while time.monotonic() - began < limit_s and fleet.aggregator.poll() is None:
        if kind is None and len(_versions(fleet.db)) >= start + rounds + 1:
            break  # an attack runs for all of limit_s: a flood needs time to build up
        time.sleep(0.2)
    wall = time.monotonic() - began
    sent = {}
    if attacker is not None:
        attacker.send_signal(signal.SIGTERM)
        sent = json.loads(attacker.communicate(timeout=30)[0] or "{}")
    made = _versions(fleet.db)[start:]
    counted = [v["round_wall_s"] for v in made[1:]]
    alive = fleet.aggregator.poll() is None
    result = {"attack": kind or "none", "phase_s": round(wall, 1),
              "versions_made": len(made), "rounds_counted": len(counted),
              "round_wall_s_max": round(max(counted), 3) if counted else None,
              "round_wall_s_median": round(statistics.median(counted), 3) if counted else None,
              "messages_tried": sent.get("sent", 0), "bytes_tried": sent.get("bytes", 0),
              "aggregator_alive": alive}
    if alive and kind is not None:
        stopped, before = time.monotonic(), len(_versions(fleet.db))
        result["rss_mb_after"] = _proc_status(fleet.aggregator.pid)["VmRSS"]
        result["drain_s"] = _drain(fleet.aggregator.pid, RECOVERY_S)
        while len(_versions(fleet.db)) <= before and fleet.aggregator.poll() is None \
                and time.monotonic() - stopped < RECOVERY_S:
            time.sleep(0.2)
        recovered = len(_versions(fleet.db)) > before
        result["next_version_after_s"] = (round(time.monotonic() - stopped, 1)
                                          if recovered else None)
        result["aggregator_alive"] = fleet.aggregator.poll() is None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="unattacked rounds counted")
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds per attack")
    parser.add_argument("--attacks", default=",".join(ATTACK_ORDER))
    parser.add_argument("--inbound-queue-bytes", type=int, help="[limits] of the aggregator")
    parser.add_argument("--workdir", help="keep configs, store and logs here (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedge-abuse-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        broker = MosquittoBroker.start(workdir=work / "mosquitto")
        fleet = None
        try:
            limits = ("" if args.inbound_queue_bytes is None else
                      f"[limits]\ninbound_queue_bytes = {args.inbound_queue_bytes}\n")
            db = _write_configs(work, broker.port, limits)
            aggregator = _fedge(work, "aggregator", "serve", "--config",
                                str(work / "aggregator.toml"), log="aggregator.log")
            devices = [_fedge(work, "device", "--config", str(work / f"device{i}.toml"),
                              log=f"device{i}.log") for i in range(DEVICES)]
            fleet = Fleet(aggregator, devices, db)
            deadline = time.monotonic() + 60
            while len(_versions(db)) < 2 and time.monotonic() < deadline:  # warmed up
                time.sleep(0.2)
            rss_start = _proc_status(aggregator.pid)
            phases = [_phase(fleet, None, broker.port, args.rounds, args.phase_s)]
            for kind in [k for k in args.attacks.split(",") if k]:
                phases.append(_phase(fleet, kind, broker.port, args.rounds, args.phase_s))
            alive = aggregator.poll() is None
            rss_end = _proc_status(aggregator.pid) if alive else {}
            serving = [p["attack"] for p in phases[1:] if p.get("next_version_after_s") is None]
            versions = _versions(db)
            log_tail = (work / "aggregator.log").read_text(errors="replace")[-1500:]
        finally:
            if fleet is not None:
                for proc in [*fleet.devices, fleet.aggregator]:
                    proc.send_signal(signal.SIGTERM)
                for proc in [*fleet.devices, fleet.aggregator]:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            broker.stop()
    base = phases[0]["round_wall_s_median"]
    for phase in phases[1:]:
        median = phase["round_wall_s_median"]
        phase["ratio_to_unattacked"] = (round(median / base, 2) if median and base else None)
    print(json.dumps({
        "benchmark": "abuse",
        "setup": {"devices": DEVICES, "model": "mlp 64-16-10", "mode": "sync, plain",
                  "unattacked_rounds": args.rounds, "attack_s": args.phase_s},
        "crashes": 0 if alive else 1,
        "no_version_within_40_s_after": serving,
        "messages_tried": sum(p["messages_tried"] for p in phases),
        "bytes_tried": sum(p["bytes_tried"] for p in phases),
        "rss_mb_before": rss_start.get("VmRSS"),
        "rss_mb_after": rss_end.get("VmRSS"),
        "rss_mb_peak": rss_end.get("VmHWM"),
        "honest_round_s_unattacked": base,
        "phases": phases,
        "versions": len(versions) - 1,
        "final_accuracy": round(versions[-1].get("accuracy", float("nan")), 4),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "wall_s": round(time.monotonic() - began, 1),
        **({} if alive else {"aggregator_log_tail": log_tail}),
    }, indent=2))


if __name__ == "__main__":
    main()
