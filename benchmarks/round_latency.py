"""Round latency of the demo job over real MQTT, against an in-memory baseline.

    .venv/bin/python benchmarks/round_latency.py [--repeats 3] [--broker mosquitto]

The job is the demo's: digits, MLP 64-1333-10, 5 devices, Dirichlet(0.5), seed 42,
2 local epochs, batch 32, lr 0.1, 10 sync rounds. The baseline runs the same rounds in
one process with no network: the five devices train on threads just as in the demo,
then the same FedAvg. Round overhead is a round's wall time minus its slowest device's
training time; the target is under 0.5 s. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from aggregator.strategy import Contribution, FedAvg
from edge_client.training import NumpyTrainer, TrainConfig
from fedge.demo import Demo, run_demo
from fedge.demo_flags import parse_demo_flags
from fedge.digits_job import DigitsJob

TARGET_OVERHEAD_S = 0.5


def fedge_run(demo: Demo) -> dict:
    summary = run_demo(demo)
    return {k: summary[k] for k in ("final_accuracy", "round_wall_s_median",
                                    "train_s_median", "round_overhead_s_median", "wall_s",
                                    "bytes_up", "bytes_down")}


def in_memory_run(demo: Demo) -> dict:
    """The same rounds with no broker, no serialization and no storage."""
    fleet, config = demo.fleet, demo.aggregator
    job = DigitsJob.split(fleet.devices, fleet.alpha, config.seed, fleet.hidden)
    global_w = job.initial_weights()
    trainers = [job.device_trainer(i) for i in range(fleet.devices)]
    train = config.train
    fit = train
    walls, overheads = [], []
    for _ in range(config.rounds):
        global_w, wall, slowest = _in_memory_round(trainers, job.shards, global_w, fit)
        walls.append(wall)
        overheads.append(wall - slowest)
    trainers[0].set_weights(global_w)
    accuracy = trainers[0].evaluate(job.x_test, job.y_test)["accuracy"]
    return {"final_accuracy": accuracy, "round_wall_s_median": statistics.median(walls),
            "round_overhead_s_median": statistics.median(overheads)}


def _in_memory_round(trainers: list[NumpyTrainer], shards: list, start: dict,
                     fit: TrainConfig) -> tuple[dict, float, float]:
    """One round: devices train on threads, then FedAvg. Returns (weights, wall, slowest)."""
    contributions: list[Contribution] = []
    train_s: list[float] = []

    def train(i: int) -> None:
        trainers[i].set_weights(start)
        result = trainers[i].fit(*shards[i], fit)
        local = trainers[i].get_weights()
        contributions.append(Contribution(f"d{i}", {k: local[k] - start[k] for k in start},
                                          len(shards[i][0])))
        train_s.append(result.train_s)

    began = time.perf_counter()
    threads = [threading.Thread(target=train, args=(i,)) for i in range(len(trainers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    new = FedAvg().aggregate(start, sorted(contributions, key=lambda c: c.device_id))
    return new, time.perf_counter() - began, max(train_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--broker", default="mosquitto", choices=("mosquitto", "embedded"))
    args = parser.parse_args()
    demo = parse_demo_flags(["--broker", args.broker])
    fedge_runs, baseline_runs = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        baseline_runs.append(in_memory_run(demo))
        fedge_runs.append(fedge_run(demo))
    fedge_round = statistics.median(r["round_wall_s_median"] for r in fedge_runs)
    base_round = statistics.median(r["round_wall_s_median"] for r in baseline_runs)
    overhead = statistics.median(r["round_overhead_s_median"] for r in fedge_runs)
    print(json.dumps({
        "benchmark": "round_latency",
        "job": {"devices": demo.fleet.devices, "rounds": demo.fleet.rounds,
                "hidden": demo.fleet.hidden, "epochs": demo.aggregator.train.epochs,
                "batch_size": demo.aggregator.train.batch_size, "broker": args.broker,
                "repeats": args.repeats},
        "fedge": {
            "round_wall_s_median": round(fedge_round, 4),
            "train_s_median": round(statistics.median(r["train_s_median"]
                                                      for r in fedge_runs), 4),
            "round_overhead_s_median": round(overhead, 4),
            "final_accuracy": [round(r["final_accuracy"], 4) for r in fedge_runs],
            "wall_s": [r["wall_s"] for r in fedge_runs],
        },
        "baseline_in_memory": {
            "round_wall_s_median": round(base_round, 4),
            "round_overhead_s_median": round(statistics.median(
                r["round_overhead_s_median"] for r in baseline_runs), 4),
            "final_accuracy": [round(r["final_accuracy"], 4) for r in baseline_runs],
        },
        "ratio_round_wall_fedge_to_baseline": round(fedge_round / base_round, 3),
        "target_round_overhead_s": TARGET_OVERHEAD_S,
        "meets_target": overhead < TARGET_OVERHEAD_S,
    }, indent=2))


if __name__ == "__main__":
    main()
