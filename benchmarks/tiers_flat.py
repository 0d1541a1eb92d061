"""The flat side of benchmarks/tiers.py: the same fleet on ONE gateway, in the same run.

Same devices (S x N simulated devices, in S processes), same payload (the fleet
benchmark's compressed updates), same rounds; each round invites S x K devices, what the
S sites invite together per top round. One mosquitto, one `fedge aggregator serve`.
What it measures: the bytes the gateway took in per round and its round times, for the
JSON to set against the top tier's.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.fleet import _env, collect, wait_connected
from benchmarks.fleet_devices import DeviceSpec
from benchmarks.fleet_gateway import (
    Fleet,
    aggregator_toml,
    fds_for,
    free_port,
    mosquitto_conf,
    start_mosquitto,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 1333, 10]  # the demo model


def serve(toml: Path, log: Path, exit_when_done: bool = True) -> subprocess.Popen:
    """`fedge aggregator serve`, by default one that exits when its rounds are done."""
    done = ["--exit-when-done"] if exit_when_done else []
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedge", "aggregator", "serve", *done,
                                 "--config", str(toml)],
                                cwd=ROOT, env=_env(), stdout=out, stderr=out)


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return list(con.execute(query))


def versions_made(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("SELECT MAX(version) FROM models").fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def round_seconds(db: Path) -> list[float]:
    """Per version made from updates: its round's wall time (adopted ones have none)."""
    out = []
    for (info,) in rows(db, "SELECT info FROM models WHERE version > 0 ORDER BY version"):
        record = json.loads(info)
        if record.get("updates"):
            out.append(float(record.get("round_wall_s", 0.0)))
    return out


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


@dataclass(frozen=True)
class FlatPlan:
    sites: int  # device processes, one per would-be site
    devices_per_site: int
    invited_per_site: int
    rounds: int
    ack_timeout_s: float
    time_limit_s: float


def run_flat(plan: FlatPlan, mosquitto: str, workdir: Path) -> dict:
    """The whole fleet on one gateway; its bytes in per round and round times."""
    devices = plan.sites * plan.devices_per_site
    fleet = Fleet(devices, plan.sites * plan.invited_per_site, plan.rounds, "compressed",
                  "sync")
    port, conf = free_port(), workdir / "mosquitto-flat.conf"
    conf.write_text(mosquitto_conf(fleet, port))
    broker = start_mosquitto(mosquitto, conf, workdir / "mosquitto-flat.log", fds_for(fleet))
    started: list[tuple[subprocess.Popen, Path]] = []
    gateway: subprocess.Popen | None = None
    began = time.monotonic()
    try:
        wait_port(port, broker)
        for s in range(plan.sites):
            spec = DeviceSpec(host="127.0.0.1", port=port, federation="flat",
                              first=s * plan.devices_per_site, count=plan.devices_per_site,
                              sizes=SIZES, ack_timeout_s=plan.ack_timeout_s,
                              time_limit_s=plan.time_limit_s)
            spec_path, result = workdir / f"devices-flat-{s}.json", workdir / f"flat-{s}.json"
            spec_path.write_text(json.dumps(spec.__dict__))
            started.append((subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_devices", str(spec_path),
                 str(result)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True),
                result))
        connected, _ = wait_connected(started)
        db, toml = workdir / "flat.sqlite3", workdir / "flat.toml"
        toml.write_text(aggregator_toml(fleet, port, db).replace('federation = "fleet"',
                                                                 'federation = "flat"'))
        # Kept up until every device saw the end and had its updates (late ones too)
        # acknowledged, as the sites are while the top runs.
        gateway = serve(toml, workdir / "flat.log", exit_when_done=False)
        outcome = collect(started, timeout_s=plan.time_limit_s)
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(30)
        broker.terminate()
        broker.wait(10)
    versions = versions_made(db)
    stored = set(rows(db, "SELECT device_id, task_id, nonce FROM updates"))
    kept = [a for a in outcome["acks"] if a[3] != "rejected"]
    bytes_in = rows(db, "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM updates")[0][0]
    return {"connected": connected, "versions": versions,
            "invited_per_round": fleet.invited,
            "bytes_per_round": round(bytes_in / max(1, versions)),
            "round_s_median": median(round_seconds(db)),
            "lost": sum(1 for a in kept if (a[0], a[1], a[2]) not in stored)
            + len(outcome["unacked"]), "wall_s": round(time.monotonic() - began, 1)}
