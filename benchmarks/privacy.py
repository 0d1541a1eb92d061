"""What central differential privacy costs on the demo job, over real MQTT.

    .venv/bin/python benchmarks/privacy.py [--devices 10] [--rounds 10] [--noise 0.5 1.0]

The demo job (digits, MLP 64-1333-10, Dirichlet 0.5, seed 42, 2 local epochs, batch 32,
lr 0.1, sync rounds of every device) with 10 devices, dense float32 uplink and full
float32 models, as benchmarks/poisoning.py runs it. First a run without DP (FedAvg),
which also measures the devices' update norms; then one run per noise multiplier z with
[privacy] mode = "central", a fixed clip C (default: the median update norm of the run
without DP) and delta 1e-5. Each version's epsilon comes from the aggregator's own
accountant. With every device in every round the sampling rate is q = 1: no
amplification by sampling, which is what a fleet of 10 gets.

`epsilon_if_sampled_from` is arithmetic only: the epsilon the accountant would report
for the same versions if this cohort had been drawn uniformly from a larger population
(q = devices / population); the accuracy of such a run would be the one measured here,
since the noise on the mean depends on the cohort, not the population.

Prints one JSON object; progress goes to stderr. The noise is seeded (repeatable runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aggregator.privacy import PrivacyConfig, Step, epsilon
from aggregator.service import Aggregator
from aggregator.strategy import Contribution, FedAvg
from edge_client.client import ClientConfig, EdgeClient
from edge_client.shared.protocol import Weights
from edge_client.shared.protocol.tensors import flatten_sorted
from edge_client.training import mlp_trainer
from fedge.broker import start_broker
from fedge.demo import DemoConfig, _aggregator_config, _profile, _run_all, prepare_data
from fedge.fleet import SimulatedFleet

DELTA = 1e-5
POPULATIONS = (100, 1000, 10000)


class NormRecordingFedAvg(FedAvg):
    """FedAvg that notes every update's L2 norm (the run without DP picks C from them)."""

    def __init__(self) -> None:
        self.norms: list[list[float]] = []

    def aggregate(self, global_weights: Weights, contributions: list[Contribution],
                  server_lr: float = 1.0) -> Weights:
        self.norms.append([float(np.linalg.norm(flatten_sorted(c.delta)))
                           for c in contributions])
        return super().aggregate(global_weights, contributions, server_lr)


def federation(cfg: DemoConfig, privacy: PrivacyConfig, strategy: FedAvg) -> dict:
    job = prepare_data(cfg)
    sizes = [job.shards[0][0].shape[1], cfg.hidden, 10]
    workdir = Path(tempfile.mkdtemp(prefix="fedge-privacy-"))
    started = time.monotonic()
    with start_broker(cfg.broker) as broker:
        evaluator = mlp_trainer(sizes, seed=cfg.seed)

        def evaluate(weights: dict) -> dict[str, float]:
            evaluator.set_weights(weights)
            return evaluator.evaluate(job.x_test, job.y_test)

        config = dataclasses.replace(_aggregator_config(cfg, broker.host, broker.port,
                                                        workdir), privacy=privacy)
        aggregator = Aggregator(config, initial_weights=mlp_trainer(sizes, cfg.seed).get_weights(),
                                arch={"kind": "mlp", "sizes": sizes}, evaluate=evaluate,
                                strategy=strategy)
        fleet = SimulatedFleet(_profile(cfg), workdir, cfg.devices)
        clients = []
        for i, (xs, ys) in enumerate(job.shards):
            client_cfg = ClientConfig(device_id=f"device-{i}", federation="demo",
                                      host=broker.host, port=broker.port,
                                      state_dir=workdir / f"device-{i}", eligibility_check_s=0.2)
            clients.append(EdgeClient(client_cfg, fleet.trainer(i, mlp_trainer(
                sizes, seed=cfg.seed + 1 + i)), xs, ys, policy=fleet.policy(i)))
        _run_all(aggregator, clients, fleet, cfg.timeout_s)
    history = [h.to_json() for h in aggregator.history if h.version > 0]
    accuracy = [round(float(h["accuracy"]), 4) for h in history]
    out = {"final_accuracy": accuracy[-1], "best_accuracy": max(accuracy),
           "accuracy_per_version": accuracy, "wall_s": round(time.monotonic() - started, 1)}
    if privacy.enabled:
        steps = [Step(h["dp_sampling_rate"], h["dp_noise_multiplier"]) for h in history]
        out |= {"epsilon": round(history[-1]["epsilon"], 3),
                "epsilon_per_version": [round(h["epsilon"], 3) for h in history],
                "sampling_rate": history[-1]["dp_sampling_rate"],
                "noise_std_per_coordinate": round(history[-1]["dp_noise_std"], 5),
                "updates_clipped": sum(h["dp_clipped"] for h in history),
                "epsilon_if_sampled_from": {
                    str(n): round(epsilon([Step(cfg.devices / n, s.noise_multiplier)
                                           for s in steps], DELTA), 3) for n in POPULATIONS}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0],
                        help="noise multipliers z to run")
    parser.add_argument("--clip", type=float, default=None,
                        help="fixed clip C; default: the median update norm without DP")
    parser.add_argument("--hidden", type=int, default=1333)
    args = parser.parse_args()
    cfg = DemoConfig(devices=args.devices, rounds=args.rounds, hidden=args.hidden,
                     uplink="dense", downlink="full", broker="mosquitto", timeout_s=600)

    recorder = NormRecordingFedAvg()
    clean = federation(cfg, PrivacyConfig(), recorder)
    norms = np.array([n for version in recorder.norms for n in version])
    clip = args.clip if args.clip is not None else float(np.median(norms))
    print(f"no DP      final {clean['final_accuracy']:.4f}; update norms median "
          f"{np.median(norms):.3f} (first version {np.median(recorder.norms[0]):.3f}, last "
          f"{np.median(recorder.norms[-1]):.3f}); clip {clip:.3f}", file=sys.stderr, flush=True)
    runs = []
    for z in args.noise:
        privacy = PrivacyConfig(mode="central", clip=clip, noise_multiplier=z, delta=DELTA,
                                seed=cfg.seed)
        run = federation(cfg, privacy, FedAvg())
        runs.append({"noise_multiplier": z, **run,
                     "points_vs_no_dp": round(100 * (run["final_accuracy"]
                                                     - clean["final_accuracy"]), 2)})
        print(f"z = {z:<6g}  final {run['final_accuracy']:.4f}, epsilon {run['epsilon']} "
              f"({run['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    parameters = sum(int(np.prod(s)) for s in ((64, args.hidden), (args.hidden,),
                                               (args.hidden, 10), (10,)))
    print(json.dumps({
        "benchmark": "privacy",
        "job": {"devices": args.devices, "rounds": args.rounds, "hidden": args.hidden,
                "parameters": parameters, "alpha": cfg.alpha, "seed": cfg.seed,
                "epochs": cfg.epochs, "uplink": "dense-f32", "downlink": "full-f32",
                "broker": "mosquitto", "mode": "central", "delta": DELTA,
                "cohort": args.devices, "clip": round(clip, 4),
                "clip_from": "--clip" if args.clip is not None else "median norm without DP"},
        "update_norms_without_dp": {"median": round(float(np.median(norms)), 4),
                                    "p10": round(float(np.percentile(norms, 10)), 4),
                                    "p90": round(float(np.percentile(norms, 90)), 4),
                                    "first_version_median": round(float(np.median(
                                        recorder.norms[0])), 4),
                                    "last_version_median": round(float(np.median(
                                        recorder.norms[-1])), 4)},
        "no_dp": clean,
        "central_dp": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
