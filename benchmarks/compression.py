"""Uplink and downlink bytes of compressed updates against dense float32 FedAvg.

    .venv/bin/python benchmarks/compression.py [--rounds 30] [--configs dense topk=0.01,q4]

Every configuration runs the demo job (digits, MLP 64-1333-10, 5 devices,
Dirichlet 0.5, seed 42, 2 local epochs) over a real mosquitto, in this one process
and run, so the dense baseline and the compressed runs share the machine's state.
For each it reports payload bytes per device per round (uplink, downlink), the
rounds and total uplink update bytes needed to reach 0.95 test accuracy, and the
final accuracy, then the ratios to the dense baseline. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

from fedge.demo import run_demo
from fedge.demo_flags import parse_demo_flags

TARGET_ACCURACY = 0.95
DEFAULT_CONFIGS = [
    ("dense", "full"),           # the baseline: float32 both ways
    ("f16", "q8"),
    ("q8", "q8"),
    ("topk=0.01,q8", "q8"),
    ("topk=0.01,q4", "q8"),
    ("topk=0.003,q4", "q8"),
    ("randk=0.02,q4", "q8"),
    ("topk=0.01,q4", "q4"),
]


def measure(uplink: str, downlink: str, rounds: int) -> dict:
    s = run_demo(parse_demo_flags(["--rounds", str(rounds), "--uplink", uplink,
                                   "--downlink", downlink, "--broker", "mosquitto",
                                   "--mode", "sync"]))
    accuracy = s["accuracy_per_version"]
    reached = next((i + 1 for i, a in enumerate(accuracy) if a >= TARGET_ACCURACY), None)
    cumulative = None
    if reached is not None:
        cumulative = sum(s["update_bytes_per_version"][:reached])
    return {
        "uplink": s["uplink_codec"], "downlink": s["downlink_codec"],
        "bytes_up_per_device_round": s["bytes_up_per_device_round"],
        "bytes_down_per_device_round": s["bytes_down_per_device_round"],
        "update_bytes_per_update": round(s["update_bytes"] / max(1, s["updates_accepted"])),
        "rounds_to_target": reached,
        "uplink_update_bytes_to_target": cumulative,
        "final_accuracy": round(s["final_accuracy"], 4),
        "best_accuracy": round(max(accuracy), 4),
        "models_via_delta": s["models_via_delta"],
        "wall_s": s["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--configs", nargs="*", help="uplink[:downlink] specs to run "
                        "after the dense baseline, e.g. topk=0.01,q4:q8")
    args = parser.parse_args()
    configs = DEFAULT_CONFIGS
    if args.configs:
        configs = [("dense", "full")] + [
            (c.split(":")[0], c.split(":")[1] if ":" in c else "q8") for c in args.configs]
    results = [measure(up, down, args.rounds) for up, down in configs]
    base = results[0]
    for r in results:
        r["uplink_ratio_per_round"] = round(base["bytes_up_per_device_round"]
                                            / r["bytes_up_per_device_round"], 1)
        r["downlink_ratio_per_round"] = round(base["bytes_down_per_device_round"]
                                              / r["bytes_down_per_device_round"], 2)
        to_target = r["uplink_update_bytes_to_target"]
        r["uplink_ratio_to_target"] = (
            round(base["uplink_update_bytes_to_target"] / to_target, 1)
            if to_target and base["uplink_update_bytes_to_target"] else None)
    winners = [r for r in results[1:] if (r["uplink_ratio_to_target"] or 0) >= 100
               and r["downlink_ratio_per_round"] >= 4 and r["final_accuracy"] >= 0.95]
    print(json.dumps({
        "benchmark": "compression",
        "job": {"devices": 5, "rounds": args.rounds, "target_accuracy": TARGET_ACCURACY,
                "broker": "mosquitto"},
        "results": results,
        "targets": {"uplink_ratio_to_target": 100, "downlink_ratio_per_round": 4},
        "meets_targets": [f"{r['uplink']} / {r['downlink']}" for r in winners],
    }, indent=2))


if __name__ == "__main__":
    main()
