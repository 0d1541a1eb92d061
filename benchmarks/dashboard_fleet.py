"""The gateway's dashboard and REST API at fleet size: latency and payload per endpoint.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dashboard_fleet.py [--devices 10000]
        [--baseline 100] [--versions 30] [--repeat 5] [--db-url postgresql://...]

Builds two stores through the Store API (benchmarks/dashboard_store.py): `--baseline`
devices and `--devices` devices, each with `--versions` versions made from a tenth of
its fleet. Serves each with the real web server (waitress, aggregator/web) on loopback
and asks every endpoint the dashboard polls, the other /api/ endpoints and /metrics
`--repeat` times. Prints one JSON object: per endpoint, the median latency (ms) and the
payload (bytes) at both sizes and their ratios, the first request's latency at fleet
size (`ms_first`: the app parses the model history once per new version, and the
first request after one pays for it), the build times, and the load average before and
after (the machine is shared: a busy neighbour shows there).

`--db-url` keeps both stores in that PostgreSQL database (a schema each, dropped after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.store_db import StoreLocation
from aggregator.web import create_app, serve_dashboard
from benchmarks.dashboard_store import build_fleet_store

READ = "bench-read-token"
# What the dashboard polls every 5 s (aggregator/web/static/dashboard.js), as it asks.
POLLED = ("api/overview", "api/versions?brief=true", "api/devices?limit=200",
          "api/anomalies?flagged=true&limit=10000", "api/fairness?top=5",
          "api/personal?limit=200", "api/drift?limit=200", "api/lines?limit=200",
          "api/sites", "api/upper")
OTHERS = ("api/versions", "api/devices", "api/anomalies", "api/fairness", "api/status",
          "api/health", "api/stages", "api/audit?version=30", "api/enrolment",
          "api/models/30", "api/openapi.json", "metrics")


def endpoints(versions: int) -> tuple[str, ...]:
    """What the dashboard polls every 5 s, then the rest of the read API."""
    others = tuple(e.replace("=30", f"={versions}").replace("/30", f"/{versions}")
                   for e in OTHERS)
    return POLLED + others


def fetch(url: str) -> tuple[float, int, int]:
    """(seconds, payload bytes, HTTP status) of one GET with the read token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {READ}"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:  # /api/health answers 503 without a service
        body, status = exc.read(), exc.code
    return time.perf_counter() - start, len(body), status


def measure(location: StoreLocation, paths: tuple[str, ...], repeat: int) -> dict[str, dict]:
    """Per path: the median latency in ms, the payload bytes and the status."""
    server = serve_dashboard(create_app(location, READ, None), "127.0.0.1", 0)
    try:
        out = {}
        for path in paths:
            runs = [fetch(server.url + path) for _ in range(repeat)]
            out[path] = {"ms": round(statistics.median(r[0] for r in runs) * 1000, 1),
                         "ms_first": round(runs[0][0] * 1000, 1),
                         "bytes": runs[-1][1], "status": runs[-1][2]}
        return out
    finally:
        server.stop()


@contextmanager
def store_location(db_url: str | None, directory: Path, name: str) -> Iterator[StoreLocation]:
    """An SQLite file in `directory`, or a fresh schema of the PostgreSQL database."""
    if db_url is None:
        yield directory / f"{name}.sqlite3"
        return
    import psycopg  # the [postgres] extra

    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in db_url else "?"
            yield f"{db_url}{sep}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def run(devices: int, baseline: int, versions: int, repeat: int,
        db_url: str | None) -> dict:
    paths = endpoints(versions)
    load_before = os.getloadavg()
    sizes: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-dashfleet-") as tmp:
        for n in (baseline, devices):
            with store_location(db_url, Path(tmp), f"d{n}") as location:
                shape = build_fleet_store(location, n, versions)
                sizes[n] = {"build": shape, "endpoints": measure(location, paths, repeat)}
    small, large = sizes[baseline], sizes[devices]
    table = {}
    for path in paths:
        a, b = small["endpoints"][path], large["endpoints"][path]
        table[path] = {"polled": path in POLLED, "status": b["status"],
                       "ms_baseline": a["ms"], "ms": b["ms"], "ms_first": b["ms_first"],
                       "ms_ratio": round(b["ms"] / a["ms"], 1) if a["ms"] else None,
                       "bytes_baseline": a["bytes"], "bytes": b["bytes"],
                       "bytes_ratio": round(b["bytes"] / a["bytes"], 1) if a["bytes"] else None}
    polled_ms = sum(table[p]["ms"] for p in POLLED)
    polled_bytes = sum(table[p]["bytes"] for p in POLLED)
    return {"engine": "postgresql" if db_url else "sqlite", "devices": devices,
            "baseline_devices": baseline, "versions": versions, "repeat": repeat,
            "updates": large["build"].updates, "updates_baseline": small["build"].updates,
            "rejections": large["build"].rejections,
            "build_s": large["build"].seconds, "build_s_baseline": small["build"].seconds,
            "poll_ms": round(polled_ms, 1), "poll_bytes": polled_bytes,
            "endpoints": table,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db-url", default=None,
                        help="postgresql://... : keep the stores in PostgreSQL")
    args = parser.parse_args(argv)
    for flag in ("devices", "baseline", "versions", "repeat"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    result = run(args.devices, args.baseline, args.versions, args.repeat, args.db_url)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
