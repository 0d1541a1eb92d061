"""Wall time of a real secure round over mosquitto against a plain round, 10 devices.

    .venv/bin/python benchmarks/secagg_round.py [--devices 10] [--rounds 3] [--hidden 1333]

The job: digits, an MLP 64-<hidden>-10 (the demo's 1333 gives about 100,000 parameters),
one device per Dirichlet(1.0) shard, 1 local epoch, sync rounds whose target is every
device, no downlink deltas. Three federations run one after the other on one private
mosquitto, each with its aggregator and devices on threads of this process:

- `plain`: dense float32 updates, FedAvg;
- `secagg_v16`: [secagg] value_bits = 16 (32-bit masked words), complete graph;
- `secagg_v8`: value_bits = 8 (16-bit masked words), complete graph.

Reported per federation: the median round wall time (task published to version made),
the median of the slowest device's training time (from the devices' own stats), for
secure rounds the median seconds of each phase as the aggregator saw it
(phase 0 includes training) and of phases 1-3 together (`protocol_s_median`: what secure
aggregation adds to a round), the median bytes each device published over the whole run,
and the final test accuracy. Wall times on this shared 2-core machine, which also runs
every device: they show the order of the overhead, not a Pi's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from aggregator.config import AggregatorConfig, DownlinkConfig, SyncConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.service import Aggregator
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import TrainConfig
from edge_client.training import mlp_trainer
from fedge.broker import MosquittoBroker
from fedge.datasets import dirichlet_partition, load_digits, stratified_split

FEDERATION = "bench"  # plus the case name


def run(name: str, broker: MosquittoBroker, workdir: Path, data: dict, devices: int,
        rounds: int, secagg: SecAggConfig) -> dict:
    sizes = data["sizes"]
    federation = f"{FEDERATION}-{name}"  # retained messages of one run never reach another
    cfg = AggregatorConfig(federation=federation, host=broker.host, port=broker.port,
                           db_path=workdir / f"{name}.sqlite3", rounds=rounds,
                           train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                           sync=SyncConfig(target_updates=devices, round_timeout_s=120),
                           downlink=DownlinkConfig(delta=False), secagg=secagg)
    agg = Aggregator(cfg, initial_weights=mlp_trainer(sizes, seed=0).get_weights(),
                     arch={"kind": "mlp", "sizes": sizes})
    clients = []
    for i, (x, y) in enumerate(data["shards"]):
        ccfg = ClientConfig(device_id=f"{name}-{i}", federation=federation, host=broker.host,
                            port=broker.port, state_dir=workdir / name / f"dev-{i}",
                            eligibility=EligibilityConfig(enabled=False))
        clients.append(EdgeClient(ccfg, mlp_trainer(sizes, seed=i), x, y))
    threads = [threading.Thread(target=agg.run, daemon=True)] + [
        threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if agg.version < rounds:
        raise RuntimeError(f"{name}: only {agg.version} of {rounds} versions were made")
    history = [h.to_json() for h in agg.history[1:]]
    trainer = mlp_trainer(sizes)
    trainer.set_weights(agg.global_weights)
    out = {"round_wall_s_median": statistics.median(h["round_wall_s"] for h in history),
           "device_bytes_up_median": statistics.median(c.stats.bytes_up for c in clients),
           "final_accuracy": trainer.evaluate(data["x_test"], data["y_test"])["accuracy"]}
    per_round = [max(c.stats.train_s[r] for c in clients if len(c.stats.train_s) > r)
                 for r in range(rounds)]  # the devices' own clocks, for both kinds of round
    out["slowest_train_s_median"] = statistics.median(per_round)
    if secagg.enabled:
        phases = history[0]["secagg"]["phase_s"]
        out["phase_s_median"] = {p: statistics.median(h["secagg"]["phase_s"][p]
                                                      for h in history) for p in phases}
        out["protocol_s_median"] = statistics.median(  # what phases 1-3 add to a round
            sum(v for p, v in h["secagg"]["phase_s"].items() if p != "advertise_keys")
            for h in history)
        out["bits"] = history[0]["secagg"]["bits"]
        out["contributors"] = [h["secagg"]["contributors"] for h in history]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=1333)
    args = parser.parse_args()
    x, y = load_digits()
    x_train, y_train, x_test, y_test = stratified_split(x, y, 0.2, 0)
    parts = dirichlet_partition(y_train, args.devices, 1.0, 0)
    data = {"shards": [(x_train[p], y_train[p]) for p in parts], "x_test": x_test,
            "y_test": y_test, "sizes": [x.shape[1], args.hidden, 10]}
    params = sum(int(np.prod(w.shape)) for w in mlp_trainer(data["sizes"]).get_weights()
                 .values())
    cases = {"plain": SecAggConfig(),
             "secagg_v16": SecAggConfig(enabled=True, graph="complete", value_bits=16),
             "secagg_v8": SecAggConfig(enabled=True, graph="complete", value_bits=8)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="fedge-secagg-round-") as tmp:
        broker = MosquittoBroker.start(workdir=Path(tmp) / "mosquitto")
        try:
            for name, secagg in cases.items():
                start = time.monotonic()
                results[name] = run(name, broker, Path(tmp), data, args.devices,
                                    args.rounds, secagg)
                results[name]["wall_s"] = time.monotonic() - start
        finally:
            broker.stop()
    print(json.dumps({"devices": args.devices, "rounds": args.rounds, "parameters": params,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
