"""The C reference under AddressSanitizer and UBSan: the shared vectors, a fuzz of every
parser with exactly-sized caller buffers, and the simulator over a real pty.

Skipped, with the reason, where gcc or its sanitizer runtime is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.firmware import FIRMWARE_DIR, build_program, find_compiler
from firmware_bridge.vectors import VECTOR_FILE
from tests.integration.bridge_harness import McuSim, NullModem, wait_until, write_samples

pytestmark = pytest.mark.integration
# Any report ends the program at once with a non-zero status and the report on stderr.
SANITIZE = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


def _build_sanitized(name: str, out_dir: Path, defines: dict[str, str] | None = None) -> Path:
    if find_compiler() is None:
        pytest.skip("gcc not found: the C reference cannot be built")
    probe = out_dir / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    done = subprocess.run([find_compiler(), *SANITIZE, "-o", str(out_dir / "probe"),
                           str(probe)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(f"the compiler has no ASan/UBSan runtime: {done.stderr.strip()[:200]}")
    return build_program(name, out_dir, defines, extra_flags=SANITIZE)


@pytest.mark.parametrize("payload", ["256", "16"])
def test_the_fuzzer_finds_nothing_under_the_sanitizers(tmp_path, payload):
    binary = _build_sanitized("link_fuzz", tmp_path, {"FL_MAX_PAYLOAD": payload})
    done = subprocess.run([str(binary), "20000"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = dict(re.findall(r"(\w+)=(\d+)", done.stdout))
    assert counts["failures"] == "0"
    # it reached the deep paths: frames that decoded, messages that parsed, bad input,
    # and models that went through the model receiver whole
    for key in ("frames", "messages", "errors", "models"):
        assert int(counts[key]) > 100, done.stdout


def test_the_fuzzer_reports_a_broken_invariant(tmp_path):
    """The harness really checks: with its notion of the payload limit lowered, the
    frames the parser hands out break it, and it says so and fails."""
    if find_compiler() is None:
        pytest.skip("gcc not found: the C reference cannot be built")
    source = (FIRMWARE_DIR / "link_fuzz.c").read_text()
    broken = source.replace("if (frame.len > FL_MAX_PAYLOAD ||", "if (frame.len > 4u ||")
    assert broken != source
    (tmp_path / "link_fuzz.c").write_text(broken)
    out = tmp_path / "broken_fuzz"
    built = subprocess.run([find_compiler(), "-std=c99", "-O1", f"-I{FIRMWARE_DIR}", "-o",
                            str(out), str(tmp_path / "link_fuzz.c"),
                            str(FIRMWARE_DIR / "fedge_link.c")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    done = subprocess.run([str(out), "2000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "outside its buffer" in done.stderr


def test_the_vectors_pass_under_the_sanitizers(tmp_path):
    binary = _build_sanitized("link_vectors", tmp_path)
    done = subprocess.run([str(binary), str(VECTOR_FILE)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 mismatches" in done.stderr


def test_the_simulator_under_the_sanitizers_takes_samples_and_a_model(tmp_path):
    binary = _build_sanitized("mcu_sim", tmp_path)
    wire = NullModem()
    samples = write_samples(tmp_path / "samples.txt", [(i % 3, [i, -i]) for i in range(10)])
    sim = McuSim(binary, wire.mcu_port, "--samples", str(samples), "--shape", "2",
                 "--timeout-ms", "400")
    bridge = Bridge(BridgeConfig(port=wire.bridge_port, data_dir=tmp_path / "bridge",
                                 ack_timeout_s=0.4))
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    try:
        blob = os.urandom(3000)
        bridge.push_model(blob, 2)
        assert sim.wait_for("model-installed", 30) == \
            f"model-installed version=2 size=3000 crc32={zlib.crc32(blob):08x}"
        wait_until(lambda: len(bridge.dataset) == 10, 30, "the samples")
        sim.wait_for("log-acked", 30)
        # a sanitizer report would have ended it with the report on stderr
        assert sim.process.poll() is None, sim.process.stderr.read()
    finally:
        stop.set()
        thread.join(10)
        sim.stop()
        wire.close()
