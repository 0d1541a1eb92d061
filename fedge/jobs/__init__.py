"""Benchmark jobs harder than digits, made offline by seeded generators (issue 19).

    job = build_job("sensor_drift", devices=8, seed=7)
    for i, (x, y) in enumerate(job.shards): ...   # device i's own training samples
    job.arch, job.train, job.evaluator()          # model spec, local training, scoring

`benchmarks/heterogeneity.py` and `benchmarks/stragglers.py` run them.
"""

from __future__ import annotations

from collections.abc import Callable

from fedge.jobs.job import BenchJob, DeviceData, centralised
from fedge.jobs.many_class import many_class_job
from fedge.jobs.sensor_drift import sensor_drift_job

JOBS: dict[str, Callable[..., BenchJob]] = {
    "sensor_drift": sensor_drift_job,
    "many_class": many_class_job,
}


def build_job(name: str, devices: int = 8, seed: int | None = None) -> BenchJob:
    """The job `name` for `devices` devices; ValueError naming the job if unknown."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; use one of {sorted(JOBS)}")
    if devices < 1:
        raise ValueError(f"a job needs at least one device, not {devices}")
    make = JOBS[name]
    return make(devices=devices) if seed is None else make(devices=devices, seed=seed)


__all__ = ["JOBS", "BenchJob", "DeviceData", "build_job", "centralised"]
