"""Tiers benchmark: S sites x N simulated devices under one top aggregator (docs/tiers.md).

    cd fedge && .venv/bin/python -m benchmarks.tiers [--sites 10] [--devices 300]
        [--invited 100] [--rounds 3] [--kill-site] [--no-flat]

A top mosquitto and, per site, a mosquitto bridged to it (aggregator/broker_bridge.py),
a site gateway (`fedge aggregator serve` with [upper], sync rounds inviting K of its N
devices, the fleet benchmark's compressed uplink) and N simulated devices in one process
(benchmarks/fleet_devices.py: the real protocol, no training). The top gateway
(`fedge aggregator serve`, 8-bit site aggregates) makes `rounds` versions, each from every
site's aggregate of one site round. With `--kill-site`, site 0's gateway is killed with
SIGKILL in the middle of the top's second round and started again.

Then, in the same run, the same fleet on ONE gateway (benchmarks/tiers_flat.py): the
same S x N devices, the same payload and rounds, each round inviting S x K devices (what
the sites invite together per top round).

Prints one JSON object: `top_tier_bytes_per_round` (the site aggregates the top stored
per version) against `flat_bytes_per_round` (the device updates the flat gateway stored
per version; `sites_bytes_in_per_round`: what the sites took in together),
`round_s_median` of each tier and of the flat gateway, `lost` (device
updates acked by a site but not in its store, updates never acked, and site aggregates
left unacked in an uplink's outbox; `flat.lost` the same on the flat gateway), the
kill's effect (the top round it fell in, against the median), and the load average
before and after each part (the machine's other work shows in the round times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aggregator.broker_bridge import BridgePlan, bridge_section
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
from benchmarks.tiers_flat import (
    FlatPlan,
    median,
    round_seconds,
    rows,
    run_flat,
    serve,
    versions_made,
)
from fedge.broker import find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 1333, 10]  # the demo model
TOP = "top"


def site_name(index: int) -> str:
    return f"site-{index:02d}"


def top_toml(sites: int, rounds: int, port: int, db: Path) -> str:
    text = aggregator_toml(Fleet(sites, sites, rounds, "dense", "sync"), port, db)
    return text.replace('federation = "fleet"', f'federation = "{TOP}"') + (
        '\n[uplink]\nquantize = "q8"\nerror_feedback = true\ncompress = "zlib"\n')


def site_toml(name: str, fleet: Fleet, port: int, db: Path) -> str:
    text = aggregator_toml(fleet, port, db).replace('federation = "fleet"',
                                                    f'federation = "{name}"')
    text = text.replace(f"rounds = {fleet.rounds}\n", "rounds = 0\n")
    return text + (f'\n[upper]\nenabled = true\nport = {port}\nfederation = "{TOP}"\n'
                   f'site_id = "{name}"\nack_timeout_s = 10.0\n')


class Tiers:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.site_fleet = Fleet(args.devices, args.invited, args.rounds, "compressed", "sync")
        self.brokers: list[subprocess.Popen] = []
        self.gateways: dict[str, subprocess.Popen] = {}
        self.devices: list[tuple[subprocess.Popen, Path]] = []
        self.top: subprocess.Popen | None = None
        self.killed_at: float | None = None  # wall time of the SIGKILL

    def start(self) -> int:
        mosquitto = find_mosquitto()
        if mosquitto is None:
            raise SystemExit("tiers: mosquitto not found (apt-get install mosquitto)")
        w, args = self.workdir, self.args
        top_port = self._broker(mosquitto, "top", Fleet(args.sites, args.sites, 1, "dense",
                                                         "sync"), "")
        for s in range(args.sites):
            name = site_name(s)
            bridge = bridge_section(BridgePlan(name, TOP, "127.0.0.1", top_port))
            port = self._broker(mosquitto, name, self.site_fleet, bridge)
            spec = DeviceSpec(host="127.0.0.1", port=port, federation=name,
                              first=s * args.devices, count=args.devices, sizes=SIZES,
                              ack_timeout_s=args.ack_timeout_s,
                              time_limit_s=args.time_limit_s)
            spec_path, result = w / f"devices-{name}.json", w / f"outcome-{name}.json"
            spec_path.write_text(json.dumps(spec.__dict__))
            self.devices.append((subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fleet_devices", str(spec_path),
                 str(result)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True),
                result))
            toml = w / f"{name}.toml"
            toml.write_text(site_toml(name, self.site_fleet, port, w / f"{name}.sqlite3"))
        connected, _ = wait_connected(self.devices)
        for s in range(args.sites):
            name = site_name(s)
            self.gateways[name] = serve(w / f"{name}.toml", w / f"{name}.log")
        (w / "top.toml").write_text(top_toml(args.sites, args.rounds, top_port,
                                             w / "top.sqlite3"))
        self.top = serve(w / "top.toml", w / "top.log")
        return connected

    def _broker(self, mosquitto: str, name: str, fleet: Fleet, extra: str) -> int:
        port = free_port()
        conf = self.workdir / f"mosquitto-{name}.conf"
        conf.write_text(mosquitto_conf(fleet, port) + extra)
        proc = start_mosquitto(mosquitto, conf, self.workdir / f"mosquitto-{name}.log",
                               fds_for(fleet))
        self.brokers.append(proc)
        wait_port(port, proc)
        return port

    def kill_a_site(self) -> None:
        """SIGKILL site 0's gateway in the middle of the top's second round; restart it."""
        db, name = self.workdir / "top.sqlite3", site_name(0)
        deadline = time.monotonic() + self.args.time_limit_s
        while versions_made(db) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(self.args.kill_after_s)
        self.killed_at = time.time()
        self.gateways[name].kill()
        self.gateways[name].wait(10)
        self.gateways[name] = serve(self.workdir / f"{name}.toml",
                                    self.workdir / f"{name}.log")

    def wait(self) -> dict:
        assert self.top is not None
        self.top.wait(self.args.time_limit_s)
        for gateway in self.gateways.values():
            gateway.wait(120)
        return collect(self.devices, timeout_s=120)

    def stop(self) -> None:
        for proc, _ in self.devices:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.gateways.values(), *([self.top] if self.top else [])]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        for broker in self.brokers:
            broker.terminate()
            broker.wait(10)


def summary(tiers: Tiers, devices: dict, connected: int, wall_s: float, flat: dict) -> dict:
    w, args = tiers.workdir, tiers.args
    top_db = w / "top.sqlite3"
    versions = versions_made(top_db)
    top_bytes = rows(top_db, "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM updates")[0][0]
    site_bytes, site_rounds, stored, outbox_left = 0, [], set(), 0
    for s in range(args.sites):
        db = w / f"{site_name(s)}.sqlite3"
        site_bytes += rows(db, "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM updates")[0][0]
        site_rounds += round_seconds(db)
        stored |= set(rows(db, "SELECT device_id, task_id, nonce FROM updates"))
        outbox = w / f"{site_name(s)}-upper" / "outbox"
        outbox_left += sum(1 for _ in outbox.iterdir()) if outbox.is_dir() else 0
    kept = [a for a in devices["acks"] if a[3] != "rejected"]
    lost_acked = sum(1 for a in kept if (a[0], a[1], a[2]) not in stored)
    top_rounds = round_seconds(top_db)
    per_site = dict(rows(top_db, "SELECT device_id, COUNT(*) FROM updates "
                                 "WHERE state = 'aggregated' GROUP BY device_id"))
    result = {
        "benchmark": "tiers", "sites": args.sites, "devices": args.sites * args.devices,
        "devices_per_site": args.devices, "invited_per_site_round": args.invited,
        "connected": connected, "top_versions": versions,
        "top_tier_bytes_per_round": round(top_bytes / max(1, versions)),
        "flat_bytes_per_round": flat.get("bytes_per_round"),
        "sites_bytes_in_per_round": round(site_bytes / max(1, versions)),
        "round_s_median": {"top": median(top_rounds), "site": median(site_rounds),
                           "flat": flat.get("round_s_median")},
        "top_round_s": [round(s, 2) for s in top_rounds],
        "lost": lost_acked + len(devices["unacked"]) + outbox_left,
        "device_acks": len(kept), "aggregates_used_per_site": per_site,
        "wall_s": round(wall_s, 1), "flat": flat,
    }
    if tiers.killed_at is not None:  # the top round it fell in: the first made after it
        made = [at for (at,) in rows(top_db, "SELECT created_at FROM models WHERE version > 0 "
                                             "ORDER BY version")]
        index = next((i for i, at in enumerate(made) if at >= tiers.killed_at), None)
        result["site_kill"] = {
            "site": site_name(0), "top_round": None if index is None else index + 1,
            "round_s": None if index is None else round(top_rounds[index], 2),
            "round_s_median_others": median([r for i, r in enumerate(top_rounds)
                                             if i != index])}
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--devices", type=int, default=300, help="per site")
    parser.add_argument("--invited", type=int, default=100, help="per site round")
    parser.add_argument("--rounds", type=int, default=3, help="top versions")
    parser.add_argument("--kill-site", action="store_true",
                        help="SIGKILL site 0's gateway mid-round once, and restart it")
    parser.add_argument("--kill-after-s", type=float, default=1.0)
    parser.add_argument("--ack-timeout-s", type=float, default=30.0)
    parser.add_argument("--time-limit-s", type=float, default=900.0)
    parser.add_argument("--no-flat", action="store_true",
                        help="skip the flat run (no flat_bytes_per_round)")
    parser.add_argument("--keep", help="keep logs, stores and configs in this folder")
    args = parser.parse_args(argv)
    if args.sites < 1 or not 1 <= args.invited <= args.devices or args.rounds < 1:
        parser.error("need sites >= 1, 1 <= invited <= devices and rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("tiers: stopped by a signal"))
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedge-tiers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tiers = Tiers(args, workdir)
    load = {"before": _load()}
    try:
        began = time.monotonic()
        try:
            connected = tiers.start()
            if args.kill_site:
                tiers.kill_a_site()
            devices = tiers.wait()
            wall_s = time.monotonic() - began
        finally:
            tiers.stop()
        load["after_tiers"] = _load()
        flat = {} if args.no_flat else run_flat(FlatPlan(
            args.sites, args.devices, args.invited, args.rounds, args.ack_timeout_s,
            args.time_limit_s), find_mosquitto() or "mosquitto", workdir)
        load["after_flat"] = _load()
        result = summary(tiers, devices, connected, wall_s, flat)
        result["loadavg"] = load
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]

if __name__ == "__main__":
    main()
