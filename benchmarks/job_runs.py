"""One federation of a benchmark job (fedge/jobs/) through the real code: the gateway's
Aggregator and one EdgeClient per device, over a real broker, in this process.

benchmarks/heterogeneity.py and benchmarks/stragglers.py share it. Devices can be made
slower: fedge.fleet's SlowTrainer sleeps before every batch, so a device's fit takes as long as a
slower board's would (wall-clock time, not a simulated clock), while the sleeping
thread leaves the CPU to the others.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.service import VersionReport
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from fedge.federation import Federation
from fedge.fleet import SlowTrainer
from fedge.jobs import BenchJob


@dataclass
class JobRun:
    """What one federation of a job gave: accuracy and its time, and the bytes."""

    accuracy: list[float]  # per version, oldest first
    seconds: list[float]  # per version: wall seconds from the start of the run
    update_bytes: int  # the encoded updates the versions were made from
    updates: int
    bytes_up: int  # every MQTT payload byte the devices sent
    partial_updates: int
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def time_to(self, target: float) -> float | None:
        return next((s for a, s in zip(self.accuracy, self.seconds, strict=True)
                     if a >= target), None)

    def summary(self, target: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "final_accuracy": round(self.accuracy[-1], 4) if self.accuracy else None,
            "best_accuracy": round(max(self.accuracy), 4) if self.accuracy else None,
            "versions": len(self.accuracy), "updates": self.updates,
            "update_bytes": self.update_bytes,
            "update_bytes_per_update": round(self.update_bytes / max(1, self.updates)),
            "bytes_up": self.bytes_up, "partial_updates": self.partial_updates,
            "wall_s": round(self.wall_s, 1), **self.extra}
        if target is not None:
            reached = self.time_to(target)
            out["seconds_to_target"] = None if reached is None else round(reached, 2)
        return out


def run_job(job: BenchJob, config: AggregatorConfig, *, batch_s: Sequence[float] = (),
            broker: str = "mosquitto", deadline_margin_s: float = 0.3,
            timeout_s: float = 900.0, stop_at: float | None = None) -> JobRun:
    """The job's federation under `config` (its db_path is put in a temporary folder);
    device i sleeps `batch_s[i]` seconds before each batch (0 when not given). With
    `stop_at`, the run ends at the first version that reaches that accuracy (or after
    `config.rounds` versions, or `timeout_s`)."""
    seconds: list[float] = []
    accuracy: list[float] = []
    enough = threading.Event()
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as folder:
        workdir = Path(folder)
        with Federation(broker) as federation:
            config = replace(config, db_path=workdir / "aggregator.sqlite3")
            started = 0.0

            def on_version(report: VersionReport) -> None:
                seconds.append(time.monotonic() - started)
                accuracy.append(float(report.metrics.get("accuracy", float("nan"))))
                if stop_at is not None and (accuracy[-1] >= stop_at
                                            or len(accuracy) >= config.rounds):
                    enough.set()
            federation.add_aggregator(config, job.initial_weights(), job.arch,
                                      evaluate=job.evaluator(), on_version=on_version)
            for i, (x, y) in enumerate(job.shards):
                slow = batch_s[i] if i < len(batch_s) else 0.0
                device = ClientConfig(
                    device_id=f"device-{i}", federation=config.federation,
                    state_dir=workdir / f"device-{i}", eligibility_check_s=0.2,
                    eligibility=EligibilityConfig(enabled=False),
                    deadline_margin_s=deadline_margin_s)
                federation.add_device(device, SlowTrainer.waiting(job.device_trainer(i), slow),
                                      x, y)
            started = time.monotonic()
            if stop_at is None:
                result = federation.run(timeout_s)
            else:
                federation.start()
                if not enough.wait(timeout_s):
                    raise TimeoutError(f"no version reached {stop_at} in {timeout_s:.0f} s")
                federation.stop()
                result = federation.result()
    stats = result.device_stats.values()
    return JobRun(accuracy=accuracy, seconds=seconds,
                  update_bytes=sum(int(h.get("update_bytes") or 0) for h in result.history),
                  updates=sum(int(h.get("updates") or 0) for h in result.history),
                  bytes_up=result.bytes_up,
                  partial_updates=sum(s.partial_updates for s in stats), wall_s=result.wall_s)
