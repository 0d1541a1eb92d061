"""A gateway's store as a fleet leaves it, written straight through the `Store` API (no
broker, no devices): what benchmarks/dashboard_fleet.py and the fleet-size dashboard test
(tests/integration/test_dashboard_fleet.py) serve.

For `devices` devices: every device's status (most online, some not eligible, some with a
drift report on each of a few statuses), its enrolled key, `versions` model versions each
made from a cohort of a tenth of the fleet (so 30 versions at 10,000 devices hold 30,000
updates, each device's in three of them), with the service's info (contributors,
fairness, personal figures), an open round with pending updates, some rejections and
clipped updates. Update payloads are random bytes of a compressed update's size: nothing
on the web side decodes them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from aggregator.fairness import fairness_of
from aggregator.personalize import summary
from aggregator.store import Store
from aggregator.store_db import StoreLocation
from edge_client.shared.protocol import Model, Status, Task, TrainConfig, Update, encode
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.shared.protocol.drift import DriftReport

PAYLOAD_BYTES = 2_000  # a compressed update of the demo model (top-k 1% q4 zlib)
MODEL_BYTES = 400_105  # the demo's float32 MLP as sent
DRIFT_STATUSES = 3  # statuses with a drift report per device


@dataclass(frozen=True)
class FleetShape:
    """What `build_fleet_store` wrote."""

    devices: int
    versions: int
    cohort: int  # updates per version
    updates: int  # rows in the updates table
    rejections: int
    seconds: float  # how long the build took


def device_name(i: int) -> str:
    return f"dev-{i:05d}"


def build_fleet_store(location: StoreLocation, devices: int, versions: int = 30,
                      seed: int = 0) -> FleetShape:
    """Fill an empty store at `location` (an SQLite file or a postgresql:// URL)."""
    start = time.perf_counter()
    rng = random.Random(seed)
    store = Store(Path(location) if isinstance(location, Path) else location)
    try:
        names = [device_name(i) for i in range(devices)]
        cohort = max(1, devices // 10)
        with store.group():
            for name in names:
                store.enroll(name, f"ed25519:{name}")
            _add_model(store, 0, {"round": 0, "updates": 0, "model_bytes": MODEL_BYTES})
        stored = 0
        for r in range(1, versions + 1):
            members = [names[(r * cohort + i) % devices] for i in range(cohort)]
            stored += _round(store, rng, r, members)
        open_round = [names[(i * 7) % devices] for i in range(cohort // 2)]
        stored += _open_round(store, rng, versions + 1, open_round)
        rejected = _rejections(store, rng, names)
        _statuses(store, rng, names, versions)
    finally:
        store.close()
    return FleetShape(devices, versions, cohort, stored, rejected,
                      round(time.perf_counter() - start, 1))


def _add_model(store: Store, version: int, info: dict, used: list[Update] | None = None,
               close: str | None = None) -> None:
    blob = encode(Model(version=version, tensors={}, arch={"kind": "mlp", "sizes": [8, 4]}))
    store.add_model(version, blob, sha256_hex(blob), info, used=used, close_task=close)


def _update(rng: random.Random, device: str, task: str, base: int) -> Update:
    return Update(device_id=device, task_id=task, nonce=f"n-{device}-{task}",
                  base_version=base, num_samples=rng.randint(50, 500), tensors={},
                  metrics={"train_s": round(rng.uniform(0.1, 2.0), 3),
                           "local_accuracy": round(rng.uniform(0.6, 0.99), 4),
                           "local_loss": round(rng.uniform(0.05, 0.9), 4)})


def _task(store: Store, r: int) -> Task:
    task = Task(task_id=f"t{r}", mode="sync", round=r, model_version=r - 1,
                train=TrainConfig())
    store.add_task(task, encode(task))
    return task


def _store_updates(store: Store, rng: random.Random, used: list[Update], state: str) -> None:
    with store.group():
        for u in used:
            store.add_update(u, rng.randbytes(PAYLOAD_BYTES), state)


def _round(store: Store, rng: random.Random, r: int, members: list[str]) -> int:
    """Round r: a task for version r-1, the cohort's updates, version r made from them."""
    task = _task(store, r)
    used = [_update(rng, d, task.task_id, r - 1) for d in members]
    _store_updates(store, rng, used, "pending")
    samples = sum(u.num_samples for u in used)
    info = {"round": r, "updates": len(used), "update_bytes": PAYLOAD_BYTES * len(used),
            "model_bytes": MODEL_BYTES, "delta_bytes": 44_877,
            "round_wall_s": round(rng.uniform(5, 30), 2), "mode": "sync",
            "max_train_s": 2.0, "devices": sorted(members),
            "accuracy": round(0.8 + 0.15 * r / (r + 3), 4), "loss": round(0.6 / r, 4),
            "device_accuracy": sum(u.num_samples * u.metrics["local_accuracy"]
                                   for u in used) / samples,
            "device_loss": sum(u.num_samples * u.metrics["local_loss"] for u in used) / samples,
            "fairness": fairness_of(used, 0.7).to_json(),
            "personal": summary({u.device_id: {
                "global_accuracy": u.metrics["local_accuracy"],
                "personal_accuracy": min(0.999, u.metrics["local_accuracy"] + 0.02),
                "cluster": rng.randrange(3)} for u in used}),
            "cluster0_accuracy": 0.9, "cluster1_accuracy": 0.91, "cluster2_accuracy": 0.89}
    _add_model(store, r, info, used=used, close=task.task_id)
    clipped = rng.sample(members, max(1, len(members) // 50))
    store.add_clipping(r, {d: rng.uniform(5, 50) for d in clipped}, 1.0, 1.2)
    return len(used)


def _open_round(store: Store, rng: random.Random, r: int, members: list[str]) -> int:
    """The round under way: its updates are pending."""
    task = _task(store, r)
    _store_updates(store, rng, [_update(rng, d, task.task_id, r - 1) for d in members],
                   "pending")
    return len(members)


def _rejections(store: Store, rng: random.Random, names: list[str]) -> int:
    """A twentieth of the fleet sent a few updates that were refused."""
    reasons = ("stale base version 3", "bad signature", "tensor shape mismatch")
    count = 0
    with store.group():
        for device in rng.sample(names, max(1, len(names) // 20)):
            for k in range(rng.randint(1, 4)):
                store.add_rejection(device, f"r-{device}-{k}", rng.choice(reasons))
                count += 1
    return count


def _statuses(store: Store, rng: random.Random, names: list[str], version: int) -> None:
    """Every device's last few statuses, each with a drift report (the last is kept as
    its presence)."""
    now = time.time()
    for k in range(DRIFT_STATUSES):
        seen = []
        for i, name in enumerate(names):
            online = i % 10 != 0
            eligible = online and i % 4 != 0
            psi = rng.uniform(0.0, 0.4)
            report = DriftReport(psi_max=round(psi, 4), psi_mean=round(psi / 2, 4),
                                 feature=rng.randrange(8), seen=200, accuracy=None,
                                 labelled=0)
            status = Status(device_id=name, online=online, eligible=eligible,
                            reason="" if eligible else ("on battery" if online else "offline"),
                            model_version=version, battery_pct=float(rng.randint(5, 100)),
                            drift=report)
            seen.append((status, now - rng.uniform(0, 600) - 60 * (DRIFT_STATUSES - k)))
        with store.group():
            store.set_devices(seen)
