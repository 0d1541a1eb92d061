"""The Python link against the shared vector file (C is checked against the same file in
tests/integration/test_bridge_c_vectors.py)."""

from __future__ import annotations

import pytest

from firmware_bridge.vectors import load_vectors, python_result

VECTORS = load_vectors()
KINDS = {"crc16", "crc32", "cobs_encode", "cobs_decode", "frame_encode", "frame_stream",
         "message"}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v.kind}-{v.name}")
def test_python_agrees_with_the_vector(vector) -> None:
    assert python_result(vector) == vector.expected


def test_the_file_covers_what_the_issue_asks_for() -> None:
    kinds = {v.kind for v in VECTORS}
    assert kinds == KINDS
    expected = " ".join(v.expected for v in VECTORS)
    for error in ("bad_cobs", "bad_crc", "truncated", "too_long", "bad_length",
                  "unknown_version", "unknown_type", "bad_payload"):
        assert f"error:{error}" in expected, error
    names = {v.name for v in VECTORS}
    assert {"max_256", "run_254", "run_255", "zeros_300", "corrupted_payload"} <= names
    assert not any("reencode_mismatch" in v.expected for v in VECTORS)
    assert len({(v.kind, v.name) for v in VECTORS}) == len(VECTORS)
