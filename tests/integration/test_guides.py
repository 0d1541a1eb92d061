"""The step-by-step guides run as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fedge.broker import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_secure_gateway_quickstart_runs(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="fedge-test-guide-"))  # mosquitto must read it
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FEDGE": str(bin_dir / "fedge"), "PYTHON": sys.executable}
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "examples" / "gateway" / "secure-quickstart.sh"), str(folder),
             str(free_port())], capture_output=True, text=True, timeout=180, env=env,
            check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "enrolled pi-kitchen" in done.stdout
    assert '"device_id": "pi-kitchen"' in done.stdout and '"used_in": 2' in done.stdout
    assert "security on" in done.stderr
