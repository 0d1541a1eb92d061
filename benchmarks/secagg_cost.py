"""What secure aggregation costs a device and the server, for 10, 50 and 100 devices.

    .venv/bin/python benchmarks/secagg_cost.py [--dim 100000] [--devices 10 50 100]
        [--graphs complete sparse] [--dropouts 0 0.3] [--complete-dim-100 N]

Each case is one whole round of `edge_client.shared.secagg` in this process: the server and
one client per device, every message crossing the in-process relay as bytes
(`aggregator.secagg.simulation.run_round`). Inputs are q8-quantized dense updates of
`--dim` coordinates (the demo model's size is about 100,000): float32 values clipped to
[-0.05, 0.05] and rounded to 8-bit signed levels with one scale for the whole round, so
the masked sum needs 16 bits (the smallest word holding 100 * 127). Dropouts leave after
the share phase, before their masked input arrives: their neighbours have masked with
them, so the server must rebuild their masking keys (the costly case for the server).

Graphs: `complete` is classic SecAgg (degree n - 1); `sparse` is SecAgg+ with the
default degree rule (docs/secure-aggregation.md), which gives the complete graph up to
about 50 devices; a sparse case whose graph is complete is not run again.

Reported per case: degree k and threshold t; the median over devices of the CPU seconds
each phase took on a device; the median bytes a device sent and received (wire sizes,
including the round setup it receives); the server's CPU seconds per phase; the ratio
of a device's bytes to a plain q8 update of the same coordinates (one byte each, no
masking); whether the sum was exact. Times are process CPU time (time.process_time),
so other load on the machine inflates them less than wall time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from aggregator.secagg.server import SecAggServer
from aggregator.secagg.simulation import PHASES, run_round
from edge_client.shared.secagg import FixedPoint, GraphParams, Phase, SecAggClient

CLIP = 0.05
VALUE_BITS = 8


def measure(n: int, graph: str, dropout: float, dim: int) -> dict:
    params = GraphParams.complete(n) if graph == "complete" else GraphParams.sparse(n)
    codec = FixedPoint.quantized(clip=CLIP, value_bits=VALUE_BITS, max_devices=n)
    ids = [f"device-{i:03d}" for i in range(n)]
    rng = np.random.default_rng(n)
    server = SecAggServer(f"bench-{n}-{graph}", ids, dim, bits=codec.bits, params=params,
                          round_seed=rng.bytes(32))
    expected = np.zeros(dim, dtype=np.uint64)

    def provider(i: int):  # encodes the update only when the client masks it
        def encode() -> np.ndarray:
            update = np.random.default_rng(1000 + i).normal(0, 0.02, dim).astype(np.float32)
            x = codec.encode(update, np.random.default_rng(2000 + i))
            expected[:] += x
            return x
        return encode

    clients = {u: SecAggClient(u, server.setup.round_id, provider(i)) for i, u in enumerate(ids)}
    dropped = rng.choice(ids, round(dropout * n), replace=False)
    wall = time.perf_counter()
    trace = run_round(server, clients, dropouts={u: Phase.MASKED_INPUT for u in dropped})
    wall = time.perf_counter() - wall
    result = server.result
    exact = bool(np.array_equal(result.total, expected & np.uint64((1 << codec.bits) - 1)))
    plain = dim * VALUE_BITS // 8
    device_phase = {p.value: _median(trace.device_seconds[p.value].values()) for p in PHASES}
    sent = _median(trace.bytes_sent.values())
    received = _median(trace.bytes_received.values())
    return {
        "devices": n, "graph": graph, "degree": params.degree, "threshold": params.threshold,
        "dropout": dropout, "contributors": len(result.contributors), "exact_sum": exact,
        "dim": dim, "bits": codec.bits,
        "device_cpu_s_median": {k: round(v, 4) for k, v in device_phase.items()},
        "device_cpu_s_median_total": round(sum(device_phase.values()), 4),
        "device_bytes_sent_median": round(sent),
        "device_bytes_received_median": round(received),
        "plain_q8_update_bytes": plain,
        "ratio_sent_to_plain": round(sent / plain, 3),
        "ratio_sent_and_received_to_plain": round((sent + received) / plain, 3),
        "server_cpu_s": {k: round(v, 3) for k, v in trace.server_seconds.items()},
        "server_cpu_s_total": round(sum(trace.server_seconds.values()), 3),
        "wall_s": round(wall, 2),
    }


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--graphs", nargs="+", default=["complete", "sparse"],
                        choices=["complete", "sparse"])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--complete-dim-100", type=int, default=None,
                        help="a smaller dim for complete graphs of 100 or more devices")
    args = parser.parse_args()
    cases = []
    for n in args.devices:
        for graph in args.graphs:
            if graph == "sparse" and "complete" in args.graphs \
                    and GraphParams.sparse(n) == GraphParams.complete(n):
                cases.append({"devices": n, "graph": "sparse",
                              "same_as": "complete (the degree rule gives n - 1 here)"})
                continue
            dim = args.dim
            if graph == "complete" and n >= 100 and args.complete_dim_100:
                dim = args.complete_dim_100
            for dropout in args.dropouts:
                print(f"n={n} {graph} dropout={dropout} dim={dim}", file=sys.stderr)
                cases.append(measure(n, graph, dropout, dim))
    print(json.dumps({
        "benchmark": "secagg_cost",
        "inputs": {"quantization": f"q{VALUE_BITS} dense, one scale per round",
                   "clip": CLIP, "dim": args.dim},
        "dropouts_leave": "after sharing keys, before sending masked input",
        "cases": cases,
    }, indent=2))


if __name__ == "__main__":
    main()
