"""The adaptive top-k uplink through real mosquitto: every update chooses its own k and
declares it, and the aggregator accepts and decodes them all (docs/compression.md)."""

from __future__ import annotations

import pytest

from fedge.demo import run_demo
from fedge.demo_flags import parse_demo_flags

pytestmark = pytest.mark.integration

DENSE_UPDATE = 99_985 * 4  # bytes of one float32 update of the demo's MLP


def test_adaptive_updates_are_accepted_and_between_their_bounds():
    s = run_demo(parse_demo_flags(["--devices", "3", "--rounds", "3", "--broker",
                                   "mosquitto", "--uplink", "adaptive"]))
    assert s["uplink_codec"] == "topk0.01-0.06e0.5-q4-ef-zlib"
    assert s["updates_accepted"] == 9 and s["rejected_updates"] == 0
    assert s["model_versions"] == 3 and s["final_accuracy"] > 0.85
    per_update = s["update_bytes"] / 9
    # at least 1% of the coordinates at 4 bits with their indices, at most 6%
    assert 0.01 * 99_985 * 0.5 < per_update < 0.06 * 99_985 * 2 + 1000
    assert s["uplink_compression"] > 20
