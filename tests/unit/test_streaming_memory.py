"""The aggregator's memory is O(model) whatever the cohort: a round of 1,000 dense updates
of a 100k-parameter model (the demo's MLP), taken as ingest takes them (decoded, stored,
folded) and made into a version, adds about as much RSS as a round of 100. Each round runs
in a fresh process (benchmarks/aggregation_memory.py), so its peak RSS is its own. The old
path held every update and stacked them as float64: 1.4 GB at 1,000 updates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_MB = 99985 * 8 / 2**20  # one float64 vector of the model: the running sum


def _round(codec: str, updates: int) -> dict:
    code = ("import json; from benchmarks.aggregation_memory import child; "
            f"print(json.dumps(child('stream', {codec!r}, {updates})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_round_of_1000_dense_updates_adds_memory_of_the_order_of_the_model():
    small, large = _round("dense", 100), _round("dense", 1000)
    # 1,000 dense updates are 400 MB of float32: none of them may stay
    assert large["rss_added_mb"] < 40 * MODEL_MB, large  # ~13 MB measured
    assert large["rss_peak_mb"] - small["rss_peak_mb"] < 10 * MODEL_MB, (small, large)
    assert large["rss_peak_mb"] < 300, large


def test_a_round_of_1000_sparse_updates_stays_as_small():
    large = _round("topk", 1000)
    assert large["rss_added_mb"] < 40 * MODEL_MB, large
