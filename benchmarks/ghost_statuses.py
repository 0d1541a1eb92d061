"""Fake "online, eligible" statuses beside an honest federation, in plain mode.

    .venv/bin/python benchmarks/ghost_statuses.py [--ghosts 20000] [--versions 20]

An honest federation (5 devices, digits MLP, target 5, 10 s deadline) makes its first
version; then one client publishes `--ghosts` retained statuses of made-up devices.
Measured: the time for the next `--versions` versions (capped at --cap-s), aborted
rounds, the rows in the devices table; then the aggregator is restarted with the ghosts
still retained, and the time for 5 more versions. Once without ghosts, once with.
Prints one JSON object: both runs and the ratio of their times. Needs mosquitto.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from aggregator.config import AggregatorConfig, SyncConfig
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import Status, TrainConfig, encode
from edge_client.training import mlp_trainer
from fedge.broker import MosquittoBroker
from fedge.datasets import dirichlet_partition, load_digits
from fedge.federation import Federation

DEVICES = 5


def _flood(broker: MosquittoBroker, federation: str, count: int) -> float:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id="ghosts", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    began = time.monotonic()
    infos = [client.publish(f"fedge/{federation}/status/ghost-{i}", encode(Status(
        device_id=f"ghost-{i}", online=True, eligible=True, time=time.time())), qos=1,
        retain=True) for i in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return time.monotonic() - began


def _until(predicate: Callable[[], bool], cap_s: float) -> float:
    began = time.monotonic()
    while not predicate() and time.monotonic() - began < cap_s:
        time.sleep(0.05)
    return time.monotonic() - began


def _count(db: Path, query: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchone()[0]


def run(ghosts: int, versions: int, cap_s: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fedge-ghosts-"))
    broker = MosquittoBroker.start(workdir=work / "mosquitto")
    x, y = load_digits()
    parts = dirichlet_partition(y, DEVICES, 1.0, 0)
    sizes = [x.shape[1], 16, 10]
    config = AggregatorConfig(federation="ghosts", db_path=work / "aggregator.sqlite3", rounds=0,
                              train=TrainConfig(epochs=1),
                              sync=SyncConfig(target_updates=DEVICES, round_timeout_s=10))
    try:
        with Federation(broker) as federation:
            agg = federation.add_aggregator(config, mlp_trainer(sizes, seed=0).get_weights(),
                                            {"kind": "mlp", "sizes": sizes})
            for i, part in enumerate(parts):
                federation.add_device(ClientConfig(
                    device_id=f"dev-{i}", federation="ghosts", state_dir=work / f"dev-{i}",
                    exit_when_done=False, eligibility=EligibilityConfig(enabled=False)),
                    mlp_trainer(sizes, seed=i), x[part], y[part])
            federation.start()
            _until(lambda: agg.version >= 1, 60)
            flood_s = _flood(broker, "ghosts", ghosts) if ghosts else 0.0
            start = agg.version
            took = _until(lambda: agg.version >= start + versions, cap_s)
            made = agg.version - start
            federation.stop_aggregator()
            db = config.db_path
            result = {"ghosts": ghosts, "flood_s": round(flood_s, 2), "versions": made,
                      "s": round(took, 2),
                      "aborted": _count(db, "SELECT COUNT(*) FROM tasks WHERE state='aborted'"),
                      "device_rows": _count(db, "SELECT COUNT(*) FROM devices")}
            # a restart, the ghosts still retained on the broker
            again = federation.restart_aggregator()
            start = again.version
            took = _until(lambda: again.version >= start + 5, cap_s)
            result["after_restart"] = {"versions": again.version - start,
                                       "s": round(took, 2)}
            return result
    finally:
        broker.stop()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ghosts", type=int, default=20_000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--cap-s", type=float, default=300.0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    baseline = run(0, args.versions, args.cap_s)
    attacked = run(args.ghosts, args.versions, args.cap_s)
    print(json.dumps({
        "benchmark": "ghost_statuses", "baseline": baseline, "with_ghosts": attacked,
        # wall time for the same versions, with the ghosts over without: 1.0 is no harm
        "ratio_s": round(attacked["s"] / baseline["s"], 2) if baseline["s"] else None,
        "ratio_after_restart_s": (round(attacked["after_restart"]["s"]
                                        / baseline["after_restart"]["s"], 2)
                                  if baseline.get("after_restart", {}).get("s") else None),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
