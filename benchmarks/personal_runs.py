"""Personalised and clustered federations on per-device data, for the heterogeneity
benchmark (issue 19): the real fedge code in one process (fedge.federation: a broker,
the aggregator, one EdgeClient per device on threads), scored per device.

    from benchmarks.personal_runs import Partition, run_personalized, run_clustered
    parts = [Partition(x_train, y_train, x_test, y_test), ...]   # one per device
    run_personalized(parts, mode="layers")   # {"accuracy": mean per-device, ...}
    run_clustered(parts, k=2)
    run_plain(parts)                         # FedAvg, scored the same way

`job_or_partitions` is a sequence of Partition (or 4-tuples x_train, y_train, x_test,
y_test, or objects with those attributes), or a job object holding them as `devices` or
`partitions`; a job with `arch` and `trainer(seed)` gives the model (else an MLP), with
`train` and `seed` the settings' defaults. The personal layers default to the model's
last layer (the tensors of the last `*.weight`'s prefix). Every run returns a dict:
`accuracy` (the mean over devices of the model each device serves at the end, on its own
test data), `global_accuracy` (the global model, or its cluster's, on the same data),
`per_device`, `uplink_bytes` (MQTT payload bytes the devices sent), `update_bytes` (the
updates' encoded size as the aggregator stored them), `versions`, `wall_s`; clustered
runs add `membership` and `cluster_sizes`. `python -m benchmarks.personal_runs` runs the
three on digits split non-IID by label and prints JSON.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.clusters import ClustersConfig
from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.personalize import PersonalizeConfig
from aggregator.strategy import StrategyConfig
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.clusters import cluster_count, unstack
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol import TrainConfig, Weights
from edge_client.training import Trainer, mlp_trainer
from fedge.broker import BrokerHandle
from fedge.federation import Federation, FederationResult


@dataclass(frozen=True)
class Partition:
    """One device's data: what it trains on and what it is scored on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class ModelSpec:
    """The model every party builds: `trainer(seed)` gives a fresh Trainer of `arch`."""

    arch: dict[str, Any]
    trainer: Callable[[int], Trainer]
    personal_layers: tuple[str, ...] = ()  # the head, for mode="layers"


def mlp_spec(features: int, classes: int, hidden: int = 64) -> ModelSpec:
    sizes = [features, hidden, classes]
    return ModelSpec({"kind": "mlp", "sizes": sizes}, lambda seed: mlp_trainer(sizes, seed),
                     head_of(mlp_trainer(sizes).get_weights()))


@dataclass(frozen=True)
class RunSettings:
    rounds: int = 10
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=32, lr=0.1, momentum=0.5))
    uplink: CodecConfig | None = None  # None: dense float32 updates
    weighting: str = "samples"  # [strategy] weighting (aggregator/strategy/contribution.py)
    seed: int = 0
    broker: str | BrokerHandle = "auto"  # a kind to start, or a running broker
    timeout_s: float = 600.0


def as_partitions(job_or_partitions: Any) -> list[Partition]:
    parts = job_or_partitions
    for name in ("partitions", "devices"):
        parts = getattr(parts, name, parts)
    return [p if isinstance(p, Partition)
            else Partition(p.x_train, p.y_train, p.x_test, p.y_test)
            if hasattr(p, "x_train") else Partition(*p) for p in parts]


def run_plain(job_or_partitions: Any, model: ModelSpec | None = None,
              settings: RunSettings | None = None) -> dict[str, Any]:
    """FedAvg, each device serving the global model: the baseline."""
    job = job_or_partitions
    return _run(as_partitions(job), model or model_of(job), settings or settings_of(job),
                PersonalizeConfig(), ClustersConfig())


def run_personalized(job_or_partitions: Any, mode: str = "layers",
                     personal_layers: Sequence[str] | None = None, lam: float = 0.1,
                     model: ModelSpec | None = None,
                     settings: RunSettings | None = None) -> dict[str, Any]:
    """Personal layers (mode "layers": the head stays on each device) or Ditto."""
    job = job_or_partitions
    model = model or model_of(job)
    layers = list(personal_layers or model.personal_layers) if mode == "layers" else []
    return _run(as_partitions(job), model, settings or settings_of(job),
                PersonalizeConfig(mode=mode, personal_layers=layers, lam=lam),
                ClustersConfig())


def run_clustered(job_or_partitions: Any, k: int = 2, model: ModelSpec | None = None,
                  settings: RunSettings | None = None) -> dict[str, Any]:
    """IFCA with k model lines; each device serves its cluster's model."""
    job = job_or_partitions
    return _run(as_partitions(job), model or model_of(job), settings or settings_of(job),
                PersonalizeConfig(), ClustersConfig(k=k))


def model_of(job: Any) -> ModelSpec:
    """The job's own model (`arch`, `trainer(seed)`), else an MLP for its data."""
    if hasattr(job, "arch") and callable(getattr(job, "trainer", None)):
        return ModelSpec(job.arch, job.trainer, head_of(job.trainer(0).get_weights()))
    parts = as_partitions(job)
    classes = int(max(max(p.y_train.max(), p.y_test.max()) for p in parts)) + 1
    return mlp_spec(int(np.prod(parts[0].x_train.shape[1:])), classes)


def settings_of(job: Any) -> RunSettings:
    """RunSettings with the job's `train` and `seed`, where it has them."""
    defaults = RunSettings()
    return RunSettings(train=getattr(job, "train", defaults.train),
                       seed=int(getattr(job, "seed", defaults.seed)))


def head_of(weights: Weights) -> tuple[str, ...]:
    """The last layer's prefix: of the last tensor named `*.weight` in model order."""
    last = [name for name in weights if name.endswith(".weight")][-1]
    return (last.rsplit(".", 1)[0] + ".",)


class _Served:
    """Each device's latest served model, from its on_model hook (any thread)."""

    def __init__(self) -> None:
        self.models: dict[str, Weights] = {}
        self._lock = threading.Lock()

    def hook(self, device_id: str) -> Callable[[int, dict, Weights], None]:
        def load(version: int, arch: dict, weights: Weights) -> None:
            with self._lock:
                self.models[device_id] = weights
        return load


def _run(parts: list[Partition], model: ModelSpec, settings: RunSettings,
         personalize: PersonalizeConfig, clusters: ClustersConfig) -> dict[str, Any]:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fedge-personal-"))
    try:
        result, served, chosen = _federate(parts, model, settings, personalize, clusters,
                                           work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scorer = model.trainer(settings.seed)
    rows = [_score(scorer, part, result.global_weights, served.models.get(f"device-{i}"),
                   chosen[i]) | {"device": f"device-{i}"} for i, part in enumerate(parts)]
    out: dict[str, Any] = {
        "accuracy": float(np.mean([r["accuracy"] for r in rows])),
        "worst_device_accuracy": float(min(r["accuracy"] for r in rows)),
        "global_accuracy": float(np.mean([r["global_accuracy"] for r in rows])),
        "per_device": rows, "uplink_bytes": result.bytes_up,
        "update_bytes": int(sum(h.get("update_bytes", 0) for h in result.history)),
        "downlink_bytes": result.bytes_down, "versions": result.version,
        "wall_s": round(time.monotonic() - started, 2)}
    if clusters.on:
        membership = {r["device"]: r["cluster"] for r in rows}
        out["membership"] = membership
        out["cluster_sizes"] = {str(c): sum(1 for v in membership.values() if v == c)
                                for c in range(clusters.k)}
    return out


def _federate(parts: list[Partition], model: ModelSpec, settings: RunSettings,
              personalize: PersonalizeConfig, clusters: ClustersConfig,
              work: Path) -> tuple[FederationResult, _Served, list[int | None]]:
    """The federation, run to its end: its result, what each device served last, and
    the cluster each device chose (None outside clustered runs)."""
    served = _Served()
    name = f"personal-{uuid.uuid4().hex[:8]}"  # a broker kept between runs keeps retained
    config = AggregatorConfig(
        federation=name, db_path=work / "aggregator.sqlite3", rounds=settings.rounds,
        train=settings.train, uplink=settings.uplink, seed=settings.seed,
        sync=SyncConfig(target_updates=len(parts), round_timeout_s=120.0),
        personalize=personalize, clusters=clusters,
        strategy=StrategyConfig(weighting=settings.weighting))
    with Federation(settings.broker) as federation:
        federation.add_aggregator(config, model.trainer(settings.seed).get_weights(),
                                  model.arch)
        devices = [federation.add_device(
            ClientConfig(device_id=f"device-{i}", federation=name,
                         state_dir=work / f"device-{i}", eligibility_check_s=0.2,
                         eligibility=EligibilityConfig(enabled=False)),
            model.trainer(settings.seed + 1 + i), p.x_train, p.y_train,
            on_model=served.hook(f"device-{i}"), holdout=(p.x_test, p.y_test))
            for i, p in enumerate(parts)]
        result = federation.run(settings.timeout_s)
    chosen = [d.io.local.cluster if d.io.local is not None else None for d in devices]
    return result, served, chosen


def _score(scorer: Trainer, part: Partition, global_weights: Weights,
           served: Weights | None, cluster: int | None) -> dict[str, Any]:
    """The device's served model and the global one (its cluster's) on its test data."""
    row: dict[str, Any] = {}
    model = global_weights
    if cluster_count(global_weights):
        model = unstack(global_weights)[cluster or 0]
        row["cluster"] = cluster
    scorer.set_weights(model)
    row["global_accuracy"] = scorer.evaluate(part.x_test, part.y_test)["accuracy"]
    scorer.set_weights(served if served is not None else model)
    row["accuracy"] = scorer.evaluate(part.x_test, part.y_test)["accuracy"]
    return row


def digits_by_label(devices: int = 6, groups: int = 2, seed: int = 0) -> list[Partition]:
    """Digits, non-IID by label: the ten classes fall into `groups` groups (2: 0-4 and
    5-9), device i sees only group i % groups, shared out among the devices of that
    group; each device's share is split 75/25 into its train and test data."""
    from fedge.datasets import load_digits

    x, y = load_digits()
    rng = np.random.default_rng(seed)
    members = [list(range(g, devices, groups)) for g in range(groups)]
    rows: list[list[int]] = [[] for _ in range(devices)]
    for label in range(10):
        who = members[label * groups // 10]
        idx = rng.permutation(np.flatnonzero(y == label))
        for share, device in zip(np.array_split(idx, len(who)), who, strict=True):
            rows[device] += share.tolist()
    parts = []
    for r in rows:
        order = rng.permutation(np.asarray(r))
        cut = int(0.75 * len(order))
        parts.append(Partition(x[order[:cut]], y[order[:cut]], x[order[cut:]],
                               y[order[cut:]]))
    return parts


def main() -> None:
    from edge_client.blas_threads import limit_blas_threads

    limit_blas_threads()
    parts = digits_by_label()
    settings = RunSettings(rounds=8)
    report = {"job": "digits, 6 devices, labels 0-4 or 5-9",
              "fedavg": run_plain(parts, settings=settings),
              "layers": run_personalized(parts, "layers", settings=settings),
              "ditto": run_personalized(parts, "ditto", settings=settings),
              "clusters_k3": run_clustered(parts, 3, settings=settings)}
    for run in report.values():
        if isinstance(run, dict):
            run.pop("per_device", None)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
