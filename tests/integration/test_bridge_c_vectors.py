"""The C reference (built with gcc -std=c99 -Wall -Wextra -Werror -pedantic) and the
Python link give the same result for every shared vector."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from firmware_bridge.firmware import FIRMWARE_DIR, build_program
from firmware_bridge.vectors import VECTOR_FILE, load_vectors, python_result
from tests.integration.bridge_harness import build_or_skip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def c_results(tmp_path_factory) -> dict[str, str]:
    binary = build_or_skip("link_vectors", tmp_path_factory.mktemp("firmware"))
    done = subprocess.run([str(binary), str(VECTOR_FILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    results = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert len(results) == len(done.stdout.splitlines())  # names are unique
    return results


def test_c_ran_every_vector(c_results):
    assert set(c_results) == {f"{v.kind} {v.name}" for v in load_vectors()}


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda v: f"{v.kind}-{v.name}")
def test_c_and_python_agree(vector, c_results):
    assert c_results[f"{vector.kind} {vector.name}"] == python_result(vector) == vector.expected


def test_the_c_runner_reports_a_wrong_expectation(tmp_path):
    """The C side really compares: a vector with a wrong expected result fails it."""
    binary = build_or_skip("link_vectors", tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("crc16 check 313233343536373839 29b2\n")
    done = subprocess.run([str(binary), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "MISMATCH crc16 check" in done.stderr and "29b1" in done.stdout


def test_the_library_builds_with_a_small_payload_and_without_status_names(tmp_path):
    """The options atop fedge_link.h compile (an MCU with less RAM, less flash)."""
    build_or_skip("link_vectors", tmp_path)  # skips without gcc
    out = build_program("mcu_sim", tmp_path, {"FL_MAX_PAYLOAD": "64",
                                              "FL_NO_STATUS_NAMES": "1"})
    assert out.exists()


def _code(path: Path) -> str:
    """The C text without comments."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)


def test_the_library_is_plain_c99_without_malloc():
    source = _code(FIRMWARE_DIR / "fedge_link.c")
    header = _code(FIRMWARE_DIR / "fedge_link.h")
    for forbidden in ("malloc", "calloc", "realloc", "free(", "printf", "<stdio.h>"):
        assert forbidden not in source and forbidden not in header, forbidden
    includes = {line.split()[1] for line in (source + header).splitlines()
                if line.startswith("#include")}
    assert includes == {'"fedge_link.h"', "<string.h>", "<stddef.h>", "<stdint.h>"}
    assert not re.search(r"^static\s+(?!const)[^(]*;", source, flags=re.M)  # no mutable globals
