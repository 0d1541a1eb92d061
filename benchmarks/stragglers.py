"""Stragglers: wall-clock time to a target accuracy for sync rounds (waiting for every
device, or with a deadline, or with a deadline and partial work) and FedBuff async.

    .venv/bin/python -m benchmarks.stragglers [--job sensor_drift] [--target 0.75]
        [--devices 8] [--batch-s 0.02] [--sigma 1.0] [--arms ...]

Device speeds are log-normal (sigma `--sigma`, seeded; scaled so the fastest is 1x):
device i sleeps `batch_s x slowdown_i` before each batch, so a 10x device really takes
ten times as long per batch, in wall-clock seconds (not a simulated clock); the
sleeping threads leave the two cores to the rest. Arms, in one run:

- sync_all: every round waits for every device (plain sync, the baseline);
- sync_deadline: rounds close at a deadline (the median device's fit x DEADLINE_X) with
  the updates in by then; a straggler's update comes late and is lost;
- sync_partial: the same deadline, FedProx (mu = PROX_MU) and partial_work = "deadline":
  stragglers stop at the deadline and send what they have, weighted by work done;
- fedbuff: async, a version every BUFFER updates, staleness-weighted (FedBuff).

Each arm stops at the first version at or above `--target` (or its version cap) and
reports the seconds from its start. Through the real code (fedge.federation over
mosquitto), in this process. About 2-4 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig, AsyncConfig, SyncConfig
from benchmarks.job_runs import run_job
from fedge.jobs import JOBS, BenchJob, build_job

ARMS = ("sync_all", "sync_deadline", "sync_partial", "fedbuff")
PROX_MU = 0.01
DEADLINE_X = 1.5  # the deadline as a multiple of the median device's fit time
BUFFER = 3
SYNC_ROUNDS = 40  # version caps: no arm should need them
ASYNC_VERSIONS = 150


def slowdowns(devices: int, sigma: float, seed: int) -> list[float]:
    """Log-normal speed factors, the fastest device 1x, sorted slowest last."""
    draws = np.random.default_rng(seed).lognormal(0.0, sigma, devices)
    return sorted(round(float(d), 2) for d in draws / draws.min())


def arm_config(arm: str, job: BenchJob, fit_s: list[float],
               buffer: int = BUFFER) -> AggregatorConfig:
    devices = len(job.devices)
    train = job.train
    if arm == "sync_partial":
        train = dataclasses.replace(train, prox_mu=PROX_MU, partial_work="deadline")
    if arm == "fedbuff":
        return AggregatorConfig(federation="bench", rounds=ASYNC_VERSIONS, mode="async",
                                seed=job.seed, train=train,
                                async_=AsyncConfig(buffer_size=buffer, max_staleness=20))
    timeout = 4 * max(fit_s) + 10 if arm == "sync_all" else DEADLINE_X * statistics.median(
        fit_s)
    sync = SyncConfig(target_updates=devices, round_timeout_s=timeout, deadline_growth=1.0,
                      min_fraction=0.25 if arm != "sync_all" else 1.0,
                      wait_for_devices_s=30.0)
    return AggregatorConfig(federation="bench", rounds=SYNC_ROUNDS, mode="sync",
                            seed=job.seed, train=train, sync=sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="sensor_drift", choices=sorted(JOBS))
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch-s", type=float, default=0.02,
                        help="seconds per batch the fastest device sleeps")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--buffer", type=int, default=BUFFER,
                        help="fedbuff: updates per version")
    args = parser.parse_args()
    if args.devices < 2 or not 0 < args.target < 1 or args.batch_s <= 0 \
            or not 1 <= args.buffer <= args.devices:
        parser.error("need --devices >= 2, 0 < --target < 1, --batch-s > 0 and "
                     "1 <= --buffer <= --devices")
    job = build_job(args.job, args.devices)
    factors = slowdowns(args.devices, args.sigma, args.seed)
    batch_s = [args.batch_s * f for f in factors]
    batches = job.train.full_batches(len(job.devices[0].y_train))
    fit_s = [b * batches for b in batch_s]
    results: dict[str, Any] = {}
    for arm in args.arms:
        run = run_job(job, arm_config(arm, job, fit_s, args.buffer), batch_s=batch_s,
                      stop_at=args.target, timeout_s=600.0)
        results[arm] = run.summary(args.target)
        print(f"{arm}: {results[arm]['seconds_to_target']} s to {args.target} "
              f"({results[arm]['versions']} versions)", file=sys.stderr, flush=True)
    base = results.get("sync_all", {}).get("seconds_to_target")
    for result in results.values():
        mine = result["seconds_to_target"]
        result["speedup_vs_sync_all"] = round(base / mine, 2) if base and mine else None
    print(json.dumps({
        "benchmark": "stragglers", "job": job.describe(), "target_accuracy": args.target,
        "clock": "wall-clock seconds; device slowness is real sleep before each batch",
        "slowdowns": factors, "batch_s_fastest": args.batch_s,
        "fit_s_per_device": [round(f, 2) for f in fit_s],
        "deadline_s": round(DEADLINE_X * statistics.median(fit_s), 2),
        "fedbuff_buffer": args.buffer, "prox_mu": PROX_MU, "arms": results}, indent=2))


if __name__ == "__main__":
    main()
