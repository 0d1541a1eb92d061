"""A real bundle for this machine, installed with no index into a temporary venv.

The same pip steps as install.sh (a venv without pip, pip run from the bundle's own wheel,
--no-index --find-links wheels), but into a temporary folder instead of /opt/fedge, so
the test changes nothing outside it. Building downloads the wheels through this
machine's pip (its index and find-links); the test is skipped when they cannot be had.
install.sh itself is run end to end under qemu by scripts/pi_bundle_check.py.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fedge.bundle.builder import BundleRequest, build
from fedge.bundle.inputs import PipFailed

CONFIG = """device_id = "host-test"
[model]
sizes = [64, 16, 10]
[data]
path = "/opt/fedge/app/data.npz"
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="builds an amd64 bundle")
def test_amd64_bundle_installs_offline_and_imports(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "data.npz").write_bytes(b"placeholder")
    (tmp_path / "device.toml").write_text(CONFIG)
    out = tmp_path / "bundle.tar.gz"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        build(BundleRequest("amd64", app, tmp_path / "device.toml", out, python=python))
    except PipFailed as exc:
        pytest.skip(f"no wheels to be had here: {exc}")
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="tar")
    (top,) = (tmp_path / "x").iterdir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (pip_wheel,) = (top / "wheels").glob("pip-*.whl")
    # No index, no find-links but the bundle's, no pip config: only what the bundle holds.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PIP_CONFIG_FILE": os.devnull,
           "HOME": str(tmp_path)}
    subprocess.run([str(venv / "bin" / "python"), f"{pip_wheel}/pip", "install", "-q",
                    "--no-index", "--find-links", str(top / "wheels"), "--no-cache-dir",
                    "--disable-pip-version-check", "pip", "fedge"],
                   check=True, env=env, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import edge_client.client, fedge.cli; print('ok')"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    assert (venv / "bin" / "fedge").exists()
