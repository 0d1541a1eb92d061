"""The Arduino example itself, run on this host (Serial on a pty through a small Arduino
API shim), against the real bridge: what a user flashes is what is tested."""

from __future__ import annotations

import os
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.firmware import FIRMWARE_DIR, build_sketch, find_compiler, find_cxx
from tests.integration.bridge_harness import NullModem, wait_until

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcu_sensor_node"


@pytest.fixture(scope="module")
def node_binary(tmp_path_factory) -> Path:
    if find_compiler() is None or find_cxx() is None:
        pytest.skip("gcc and g++ are needed to run the sketch on the host "
                    "(scripts/setup.sh installs gcc; apt-get install g++)")
    return build_sketch(EXAMPLE / "mcu_sensor_node.ino", tmp_path_factory.mktemp("sketch"),
                        {"SAMPLE_PERIOD_MS": "1"})


def test_the_sketch_uses_the_library_files_not_copies_that_could_drift():
    for name in ("fedge_link.h", "fedge_link.c"):
        link = EXAMPLE / name
        assert link.is_symlink(), f"{name} should link to firmware_bridge/firmware/{name}"
        assert link.resolve() == (FIRMWARE_DIR / name).resolve()


def test_the_sketch_streams_windows_and_installs_a_model(node_binary, tmp_path):
    wire = NullModem()
    node = subprocess.Popen([str(node_binary)], env={**os.environ,
                                                     "FEDGE_SERIAL": wire.mcu_port},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bridge = Bridge(BridgeConfig(port=wire.bridge_port, data_dir=tmp_path / "bridge"))
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert bridge.handshake.wait(10)
        assert bridge.device is not None and bridge.device.device_id == "node-1"
        assert bridge.device.model_capacity == 48 * 1024
        wait_until(lambda: len(bridge.dataset) >= 6, 20, "six windows from the sketch")
        blob = os.urandom(6000)
        bridge.push_model(blob, version=2)
        wait_until(lambda: bridge.pushes, 20, "the push")
        wait_until(lambda: any("model v2 installed" in e.text for e in bridge.logs), 10,
                   "the sketch's log")
    finally:
        stop.set()
        thread.join(10)
        node.terminate()
        node.wait(10)
        wire.close()
    assert not thread.is_alive()  # the dataset read below is no longer being written
    assert bridge.pushes[0].confirmed and bridge.pushes[0].crc32 == zlib.crc32(blob)
    assert f"crc32 {zlib.crc32(blob):08x}" in next(e.text for e in bridge.logs
                                                   if "installed" in e.text)
    windows = list(bridge.dataset.samples())
    assert all(w.shape == (32, 3) for w in windows)
    # the shim's pins: reading n of axis a is (3n + a) % 1024, so inside each window the
    # axes differ by a and successive readings step by 3 (mod 1024)
    for w in windows:
        values = w.values().astype(int)
        assert ((values - values[:, :1]) % 1024 == [0, 1, 2]).all()
        assert (np.diff(values, axis=0) % 1024 == 3).all()
    assert [w.label for w in windows[:4]] == [1, None, 1, None]  # button held every other
