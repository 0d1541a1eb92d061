"""The aggregator's memory for one round of N updates: streaming against the old batch path.

    .venv/bin/python benchmarks/aggregation_memory.py [--updates 100 1000] [--codecs dense topk]

For each codec (dense float32, or top-k 1% with 4-bit values, the demo's) and each round size, one
fresh process builds an `Aggregator` with the demo model's shape (MLP 64-1333-10, 99,985
parameters) and a real SQLite store, then takes N updates the way ingest does: decode,
store (committed, as before an ack), hand to the round, and makes the version. Each
update is made and encoded just before it is taken, so only the aggregator holds
anything across updates. Two paths, each in its own process:

- `stream`: today's: `open_flat_update`, `PendingUpdates.add` folds it into the round's
  running sum (aggregator/strategy/folding.py), `VersionMaker.make`.
- `batch`: a reference copy of the old path (kept here, not in the package): every
  decoded, densified update held until the version, then each tensor stacked as float64
  and averaged (`old_weighted_mean`).

Prints one JSON object: per path, codec and N, the peak RSS (VmHWM) and what the round
added to the RSS after start-up, in MB, and the seconds; the ratios of the stream peak
to the batch peak; how much the stream peak moves from the smallest N to the largest; the
load average. `seconds` is the whole round (making, encoding, storing every update);
`aggregation_s` only the folding, or the stacking and mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEMO_MODEL = {"dense0.b": (1333,), "dense0.w": (64, 1333), "dense1.b": (10,),
              "dense1.w": (1333, 10)}  # 99,985 parameters, as the demo's MLP
CODECS = {"dense": None, "topk": "topk=0.01,q4"}  # topk: the demo's sync default


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def old_weighted_mean(contributions: list) -> dict[str, np.ndarray]:
    """The batch path before streaming: every delta stacked as float64, per tensor."""
    samples = np.array([c.samples for c in contributions], dtype=np.float64)
    factors = np.array([c.staleness_factor for c in contributions], dtype=np.float64)
    weights = samples * factors / samples.sum()
    out = {}
    for name in contributions[0].delta:
        stacked = np.stack([c.delta[name] for c in contributions]).astype(np.float64)
        out[name] = np.tensordot(weights, stacked, axes=1).astype(np.float32)
    return out


def child(path: str, codec_name: str, updates: int) -> dict:
    """One round in this process; returns its figures."""
    from aggregator.config import AggregatorConfig, SyncConfig
    from aggregator.ingest import open_flat_update, open_update
    from aggregator.service import Aggregator, now
    from aggregator.strategy import Contribution
    from edge_client.shared.codecs import CodecConfig, encode_vector
    from edge_client.shared.protocol import Task, TrainConfig, Update, encode
    from edge_client.shared.protocol.seeds import update_seed

    model = {k: np.zeros(s, np.float32) for k, s in DEMO_MODEL.items()}
    size = sum(w.size for w in model.values())
    codec = None if CODECS[codec_name] is None else CodecConfig(sparsify="topk",
                                                                fraction=0.01, quantize="q4")
    with tempfile.TemporaryDirectory() as tmp:
        agg = Aggregator(AggregatorConfig(db_path=Path(tmp) / "agg.sqlite3",
                                          sync=SyncConfig(target_updates=updates)),
                         initial_weights=model)
        state = agg.core.state
        task = Task(task_id="r1-bench", mode="sync", round=1, model_version=0,
                    train=TrainConfig(), invited=None)
        agg.store.add_task(task, encode(task))
        state.task = task
        held: list = []
        rng = np.random.default_rng(0)
        base = _rss_mb("VmRSS")
        start = time.perf_counter()
        aggregating = 0.0  # the fold or the stacking, without making and storing updates
        for i in range(updates):
            device = f"device-{i:05d}"
            vec = rng.normal(0.0, 0.01, size).astype(np.float32)
            common = dict(device_id=device, task_id=task.task_id, nonce=f"n{i}",
                          base_version=0, num_samples=10 + i % 7)
            if codec is None:
                tensors, offset = {}, 0
                for name in sorted(model):
                    n = model[name].size
                    tensors[name] = vec[offset:offset + n].reshape(model[name].shape)
                    offset += n
                update = Update(**common, tensors=tensors)
            else:
                seed = update_seed(task.task_id, device)
                blob = encode_vector(vec, codec, seed, rng).blob
                update = Update(**common, tensors={}, codec=codec.to_wire(), blob=blob)
            message = encode(update)
            del vec, update
            if path == "stream":
                decoded, values = open_flat_update(message, state.weights)
                agg.store.add_update(decoded, message, "pending")
                t = time.perf_counter()
                state.pending.add(decoded, len(message), values)
                aggregating += time.perf_counter() - t
            else:
                decoded = open_update(message, state.weights)
                agg.store.add_update(decoded, message, "pending")
                held.append(decoded)
            del message, decoded
        t = time.perf_counter()
        if path == "stream":
            state.pending.accumulator().finish(state.weights, 1.0)  # what make does first
            aggregating += time.perf_counter() - t
            agg.core.versions.make(state, now())
        else:
            contributions = [Contribution(u.device_id, u.tensors, u.num_samples)
                             for u in sorted(held, key=lambda u: u.device_id)]
            mean = old_weighted_mean(contributions)
            _ = {k: w + mean[k] for k, w in model.items()}
            aggregating += time.perf_counter() - t
        seconds = time.perf_counter() - start
        agg.store.close()
    peak = _rss_mb("VmHWM")
    return {"path": path, "codec": codec_name, "updates": updates,
            "rss_peak_mb": round(peak, 1), "rss_added_mb": round(peak - base, 1),
            "seconds": round(seconds, 2), "aggregation_s": round(aggregating, 3)}


def run_child(path: str, codec: str, updates: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, __file__, "--child", path, codec, str(updates)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=["dense", "topk"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, codec, updates = args.child
        print(json.dumps(child(path, codec, int(updates))))
        return
    runs = [run_child(path, codec, n) for codec in args.codecs for n in args.updates
            for path in ("stream", "batch")]
    by = {(r["path"], r["codec"], r["updates"]): r for r in runs}
    ratios = {f"{codec}_{n}": round(by["stream", codec, n]["rss_peak_mb"]
                                    / by["batch", codec, n]["rss_peak_mb"], 3)
              for codec in args.codecs for n in args.updates}
    low, high = min(args.updates), max(args.updates)
    flat = {codec: round(by["stream", codec, high]["rss_peak_mb"]
                         - by["stream", codec, low]["rss_peak_mb"], 1)
            for codec in args.codecs}
    print(json.dumps({"model_parameters": 99985, "runs": runs,
                      "stream_to_batch_peak_ratio": ratios,
                      f"stream_peak_mb_{high}_minus_{low}": flat,
                      "loadavg": list(os.getloadavg())}, indent=1))


if __name__ == "__main__":
    main()
