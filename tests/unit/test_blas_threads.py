"""`fedge` trains with one BLAS thread unless the user chose a count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_client.blas_threads import THREAD_ENV_VARS, limit_blas_threads

PROBE = """
import json
import numpy as np  # loaded first: the limit must work after numpy, as in the CLI
from edge_client.blas_threads import limit_blas_threads
from threadpoolctl import threadpool_info
before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
changed = limit_blas_threads(1)
after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({"before": before, "changed": changed, "after": after}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env={**clean, **env}, timeout=60, check=True)
    return json.loads(done.stdout)


def test_numpys_blas_is_limited_to_one_thread_after_import():
    seen = _probe(OPENBLAS_NUM_THREADS="")
    assert seen["before"], "numpy's BLAS was not found by threadpoolctl"
    assert seen["changed"] and seen["after"] == [1] * len(seen["before"])


def test_a_thread_count_in_the_environment_wins():
    seen = _probe(OPENBLAS_NUM_THREADS="2")
    assert not seen["changed"] and seen["after"] == seen["before"] == [2]


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        limit_blas_threads(0)
