"""Hard jobs (fedge/jobs/): what FedAvg, compressed uplinks and FedProx with partial work
reach against centralised training, and the uplink bytes each sends.

    .venv/bin/python -m benchmarks.heterogeneity [--jobs sensor_drift many_class]
        [--rounds 20] [--devices 8] [--arms fedavg_dense adaptive ...] [--seed N]

For every job it prints, in one JSON object, each arm's accuracy and uplink bytes:

- centralised: one model on the pooled training data, rounds x local epochs passes;
- fedavg_dense: sync FedAvg, every device every round, float32 updates;
- fedavg_default: the same with the default uplink (top-k 1%, 4-bit, error feedback);
- adaptive: the same with the adaptive top-k uplink (codecs/adaptive.py);
- fedavg_deadline: a quarter of the devices STRAGGLER_X times slower, a round deadline,
  float32 updates; the stragglers' late updates are lost (today's sync rounds);
- fedprox_partial: the same fleet and deadline with FedProx (mu = PROX_MU) and
  partial_work = "deadline": the stragglers send what they have at the deadline,
  weighted by the work done;
- personalised: personal layers (FedPer: the job model's output layer stays on each
  device), float32 updates; clustered: IFCA with CLUSTERS model lines, float32 updates
  (benchmarks/personal_runs.py). Their accuracy is the mean over devices of the model
  each device serves on its own test data (final_accuracy), beside the worst device's
  and the global model's; the other arms' is the gateway's, on the union of that data.

Everything runs through the real code (fedge.federation: the Aggregator and one
EdgeClient per device over mosquitto), in this process. About 3-4 minutes on 2 cores
with the defaults; --rounds and --devices make it shorter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from aggregator.config import AggregatorConfig, SyncConfig
from benchmarks.job_runs import JobRun, run_job
from benchmarks.personal_runs import RunSettings, run_clustered, run_personalized
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.codecs.adaptive import ADAPTIVE_UPLINK
from fedge.codec_spec import parse_codec
from fedge.demo_flags import DEFAULT_UPLINK
from fedge.jobs import JOBS, BenchJob, build_job, centralised

PROX_MU = 0.01
STRAGGLER_X = 4.0  # a straggler's fit takes this many times the round's deadline
CLUSTERS = 2  # the clustered arm's k
OWN_MODEL_ARMS = ("personalised", "clustered")  # each device serves its own model
FEDERATED_ARMS = ("fedavg_dense", "fedavg_default", "adaptive", "fedavg_deadline",
                  "fedprox_partial", *OWN_MODEL_ARMS)


def sync_config(job: BenchJob, rounds: int, uplink: CodecConfig | None,
                **train: Any) -> AggregatorConfig:
    devices = len(job.devices)
    return AggregatorConfig(
        federation="bench", rounds=rounds, mode="sync", seed=job.seed, uplink=uplink,
        train=dataclasses.replace(job.train, **train),
        sync=SyncConfig(target_updates=devices, wait_for_devices_s=30.0, min_fraction=0.5,
                        round_timeout_s=60.0, deadline_growth=1.0))


def straggler_plan(job: BenchJob) -> tuple[list[float], float]:
    """Sleep per batch for each device (the last quarter are stragglers) and a deadline
    the others meet and the stragglers miss by STRAGGLER_X."""
    devices = len(job.devices)
    batches = job.train.full_batches(len(job.devices[0].y_train))
    deadline = 1.5
    slow = STRAGGLER_X * deadline / batches
    stragglers = max(1, devices // 4)
    return [0.0] * (devices - stragglers) + [slow] * stragglers, deadline


def run_arm(arm: str, job: BenchJob, rounds: int,
            adaptive: CodecConfig | None = ADAPTIVE_UPLINK) -> JobRun:
    default = parse_codec(DEFAULT_UPLINK["sync"])
    if arm in ("fedavg_dense", "fedavg_default", "adaptive"):
        uplink = {"fedavg_dense": None, "fedavg_default": default, "adaptive": adaptive}[arm]
        return run_job(job, sync_config(job, rounds, uplink))
    batch_s, deadline = straggler_plan(job)
    train: dict[str, Any] = {}
    if arm == "fedprox_partial":
        train = {"prox_mu": PROX_MU, "partial_work": "deadline"}
    config = sync_config(job, rounds, None, **train)
    config.sync = dataclasses.replace(config.sync, round_timeout_s=deadline)
    run = run_job(job, config, batch_s=batch_s)
    run.extra = {"stragglers": sum(1 for s in batch_s if s > 0), "deadline_s": deadline,
                 "straggler_batch_s": round(max(batch_s), 4)}
    return run


def own_model_arm(arm: str, job: BenchJob, rounds: int) -> dict[str, Any]:
    """The personalised or clustered arm (benchmarks/personal_runs.py), dense uplink."""
    settings = RunSettings(rounds=rounds, train=job.train, seed=job.seed, broker="mosquitto")
    if arm == "personalised":
        run, how = run_personalized(job, mode="layers", settings=settings), {"mode": "layers"}
    else:
        run, how = run_clustered(job, k=CLUSTERS, settings=settings), {"k": CLUSTERS}
    result = {**how, "final_accuracy": round(run["accuracy"], 4),
              "worst_device_accuracy": round(run["worst_device_accuracy"], 4),
              "global_model_accuracy": round(run["global_accuracy"], 4),
              "update_bytes": run["update_bytes"], "bytes_up": run["uplink_bytes"],
              "versions": run["versions"], "wall_s": run["wall_s"]}
    if "cluster_sizes" in run:
        result["cluster_sizes"] = run["cluster_sizes"]
    return result


def measure(job: BenchJob, rounds: int, arms: list[str], progress: Callable[[str], None],
            adaptive: CodecConfig | None = ADAPTIVE_UPLINK) -> dict[str, Any]:
    out: dict[str, Any] = {"job": job.describe(), "rounds": rounds,
                           "local_train": dataclasses.asdict(job.train)}
    started = time.monotonic()
    central = centralised(job, rounds * job.train.epochs)
    out["centralised"] = {"accuracy": round(central["accuracy"], 4),
                          "epochs": rounds * job.train.epochs}
    progress(f"{job.name}: centralised {central['accuracy']:.4f}")
    float32_bytes = 4 * job.describe()["parameters"]
    for arm in arms:
        if arm in OWN_MODEL_ARMS:
            out[arm] = own_model_arm(arm, job, rounds)
            progress(f"{job.name}: {arm} {out[arm]['final_accuracy']} (mean per device; "
                     f"worst {out[arm]['worst_device_accuracy']}, {out[arm]['wall_s']:.0f} s)")
            continue
        run = run_arm(arm, job, rounds, adaptive)
        result = run.summary()
        if arm == "adaptive" and adaptive is not None:
            result["uplink"] = adaptive.name()
        # update messages (envelope included) against the float32 vector alone
        result["float32_bytes_over_update"] = round(
            float32_bytes / max(1, result["update_bytes_per_update"]), 1)
        result["points_under_centralised"] = round(
            100 * (central["accuracy"] - (run.accuracy[-1] if run.accuracy else 0)), 2)
        out[arm] = result
        progress(f"{job.name}: {arm} {result['final_accuracy']} "
                 f"({result['update_bytes_per_update']} B/update, {run.wall_s:.0f} s)")
    dense = out.get("fedavg_dense")
    if dense:  # against the dense arm's update messages: the envelope counts on both sides
        for arm in ("fedavg_default", "adaptive", "fedprox_partial"):
            if out.get(arm):
                out[arm]["points_under_dense"] = round(
                    100 * (dense["final_accuracy"] - out[arm]["final_accuracy"]), 2)
                out[arm]["uplink_ratio_to_dense"] = round(
                    dense["update_bytes_per_update"]
                    / max(1, out[arm]["update_bytes_per_update"]), 1)
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="*", default=sorted(JOBS), choices=sorted(JOBS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--arms", nargs="*", default=list(FEDERATED_ARMS),
                        choices=FEDERATED_ARMS)
    parser.add_argument("--adaptive", default="adaptive",
                        help="the adaptive arm's uplink spec (fedge/codec_spec.py)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the jobs' data seed (default: each job's own)")
    args = parser.parse_args()
    if args.rounds < 1 or args.devices < 2:
        parser.error("--rounds must be >= 1 and --devices >= 2")
    try:
        adaptive = parse_codec(args.adaptive)
    except ValueError as exc:
        parser.error(f"--adaptive: {exc}")
    results = {name: measure(build_job(name, args.devices, args.seed), args.rounds,
                             args.arms, lambda line: print(line, file=sys.stderr,
                                                           flush=True), adaptive)
               for name in args.jobs}
    print(json.dumps({"benchmark": "heterogeneity", "devices": args.devices,
                      "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS",
                                                             "default"),
                      "jobs": results}, indent=2))


if __name__ == "__main__":
    main()
