"""Model poisoning against FedAvg and the robust strategies, over real MQTT.

    .venv/bin/python benchmarks/poisoning.py [--rounds 10] [--devices 10] [--attackers 2]

The demo job (digits, MLP 64-1333-10, Dirichlet 0.5, seed 42, 2 local epochs, batch 32,
lr 0.1, sync rounds) with 10 devices instead of 5, so that 20% of the fleet is a whole
number of attackers: device-0 and device-1 (79 and 204 of the 1,438 training samples,
also 20%). Each configuration is a whole federation as `fedge demo` builds it: a
mosquitto, the real Aggregator (given the strategy) and one EdgeClient per device. The
attackers train honestly on their own share and then report a poisoned model:

- sign_flip: global - (local - global), the honest update reversed;
- scale10:   global + 10 (local - global), the honest update boosted tenfold.

Uplink is dense float32 and models go down whole in float32, so no compression error
mixes with the attack. Runs are deterministic (seeded training, updates aggregated in
device order). The clean baseline is FedAvg with every device honest; a strategy meets
the target when its final accuracy under attack is within 2 points of it. Robust
strategies also run without attackers (what robustness costs when nobody attacks).
Prints one JSON object; progress goes to stderr.

`--attackers 0` runs only clean federations; the server optimizers' defaults were checked
on the demo job itself with
`--devices 5 --attackers 0 --strategies fedavgm fedadam fedyogi fedadagrad`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aggregator.service import Aggregator
from aggregator.strategy import Strategy, StrategyConfig, build_strategy
from edge_client.client import ClientConfig, EdgeClient
from edge_client.training import Trainer, mlp_trainer
from fedge.broker import start_broker
from fedge.demo import DemoConfig, _aggregator_config, _profile, _run_all, prepare_data
from fedge.fleet import SimulatedFleet
from fedge.poisoning import ATTACKS, PoisonedTrainer

TARGET_POINTS = 2.0
ROBUST = ("median", "trimmed_mean", "krum", "multi_krum", "norm_bound")


class _KrumChoices(logging.Handler):
    """Counts, from the Krum strategy's log, the rounds in which it kept an attacker."""

    def __init__(self, attackers: set[str]) -> None:
        super().__init__(logging.INFO)
        self.attackers = attackers
        self.rounds = self.with_attacker = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("krum: kept") and record.args:
            self.rounds += 1
            kept = set(str(record.args[0]).split(", "))
            self.with_attacker += bool(kept & self.attackers)


def federation(cfg: DemoConfig, strategy: Strategy, attack: str | None,
               attackers: int) -> dict:
    """One federation as run_demo builds it, with the first `attackers` devices poisoned."""
    job = prepare_data(cfg)
    sizes = [job.shards[0][0].shape[1], cfg.hidden, 10]
    workdir = Path(tempfile.mkdtemp(prefix="fedge-poisoning-"))
    started = time.monotonic()
    with start_broker(cfg.broker) as broker:
        evaluator = mlp_trainer(sizes, seed=cfg.seed)

        def evaluate(weights: dict) -> dict[str, float]:
            evaluator.set_weights(weights)
            return evaluator.evaluate(job.x_test, job.y_test)

        aggregator = Aggregator(_aggregator_config(cfg, broker.host, broker.port, workdir),
                                initial_weights=mlp_trainer(sizes, cfg.seed).get_weights(),
                                arch={"kind": "mlp", "sizes": sizes}, evaluate=evaluate,
                                strategy=strategy)
        fleet = SimulatedFleet(_profile(cfg), workdir, cfg.devices)
        clients = []
        for i, (xs, ys) in enumerate(job.shards):
            trainer: Trainer = mlp_trainer(sizes, seed=cfg.seed + 1 + i)
            if attack is not None and i < attackers:
                trainer = PoisonedTrainer(trainer, ATTACKS[attack])
            config = ClientConfig(device_id=f"device-{i}", federation="demo",
                                  host=broker.host, port=broker.port,
                                  state_dir=workdir / f"device-{i}", eligibility_check_s=0.2)
            clients.append(EdgeClient(config, fleet.trainer(i, trainer), xs, ys,
                                      policy=fleet.policy(i)))
        _run_all(aggregator, clients, fleet, cfg.timeout_s)
    history = [h.to_json() for h in aggregator.history if h.version > 0]
    accuracy = [round(float(h["accuracy"]), 4) for h in history]
    return {"final_accuracy": accuracy[-1], "best_accuracy": max(accuracy),
            "mean_accuracy": round(float(np.mean(accuracy)), 4),
            "accuracy_per_version": accuracy, "wall_s": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--strategies", nargs="*", default=list(ROBUST),
                        help="strategies to run beside fedavg (any name in STRATEGIES)")
    parser.add_argument("--no-clean-robust", action="store_true",
                        help="skip the robust strategies' runs without attackers")
    args = parser.parse_args()
    cfg = DemoConfig(devices=args.devices, rounds=args.rounds, uplink="dense",
                     downlink="full", broker="mosquitto", timeout_s=300)
    attacker_ids = {f"device-{i}" for i in range(args.attackers)}
    warnings = logging.StreamHandler()  # warnings (a Krum fall-back, say) still print
    warnings.setLevel(logging.WARNING)
    logging.getLogger().addHandler(warnings)
    krum_log = logging.getLogger("aggregator.strategy.krum")
    krum_log.setLevel(logging.INFO)  # its per-round "kept" lines are counted, not printed

    runs = [(None, "fedavg")]
    if not args.no_clean_robust:
        runs += [(None, s) for s in args.strategies]
    if args.attackers:  # --attackers 0 measures the strategies on a clean job only
        runs += [(attack, s) for attack in ATTACKS for s in ("fedavg", *args.strategies)]
    results = []
    for attack, name in runs:
        choices = _KrumChoices(attacker_ids)
        krum_log.addHandler(choices)
        # f = the attackers there are; trim 20% per side; Multi-Krum averages n - f
        strategy = build_strategy(StrategyConfig(name=name, byzantine=args.attackers))
        try:
            run = federation(cfg, strategy, attack, args.attackers)
        finally:
            krum_log.removeHandler(choices)
        row = {"attack": attack or "none", "strategy": name, **run}
        if choices.rounds and attack is not None:
            row["krum_rounds_keeping_an_attacker"] = choices.with_attacker
        results.append(row)
        print(f"{row['attack']:9s} {name:13s} final {run['final_accuracy']:.4f} "
              f"({run['wall_s']:.0f} s)", file=sys.stderr, flush=True)

    clean = results[0]["final_accuracy"]
    for row in results:
        row["points_vs_clean"] = round(100 * (row["final_accuracy"] - clean), 2)
        row["within_target"] = row["points_vs_clean"] >= -TARGET_POINTS
    attacks = list(ATTACKS) if args.attackers else []
    table = {attack: {r["strategy"]: r["final_accuracy"] for r in results
                      if r["attack"] == attack} for attack in ("none", *attacks)}
    print(json.dumps({
        "benchmark": "poisoning",
        "job": {"devices": args.devices, "attackers": sorted(attacker_ids),
                "rounds": args.rounds, "alpha": cfg.alpha, "seed": cfg.seed,
                "epochs": cfg.epochs, "uplink": "dense-f32", "downlink": "full-f32",
                "broker": "mosquitto", "byzantine_f": args.attackers,
                "trim_fraction": StrategyConfig().trim_fraction,
                "multi_krum_m": args.devices - args.attackers},
        "clean_baseline": clean,
        "target_points": TARGET_POINTS,
        "final_accuracy": table,
        "points_vs_clean": {attack: {r["strategy"]: r["points_vs_clean"] for r in results
                                     if r["attack"] == attack} for attack in attacks},
        "within_target": {attack: [r["strategy"] for r in results
                                   if r["attack"] == attack and r["within_target"]]
                          for attack in attacks},
        "results": results,
        "total_wall_s": round(sum(r["wall_s"] for r in results), 1),
    }, indent=2))


if __name__ == "__main__":
    main()
