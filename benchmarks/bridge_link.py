"""The serial link's cost: Python framing speed, and samples and model bytes per second
between the bridge and the gcc-built MCU simulator over a pty null modem.

    .venv/bin/python benchmarks/bridge_link.py [--samples 500] [--model-kb 48]

A pty has no baud rate, so the live figures are the protocol's and the processes' own
cost (stop-and-wait round trips); `at_115200_baud_s` is the time the same wire bytes
take on a real 115200 8N1 line (10 bits a byte). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from firmware_bridge.bridge import Bridge, BridgeConfig
from firmware_bridge.firmware import build_program
from firmware_bridge.link import FrameReader, Sample, decode_message, encode_message
from firmware_bridge.null_modem import NullModem

LINE_BYTES_PER_S = 115200 / 10
WINDOW = (32, 3)


def framing(rounds: int) -> dict:
    sample = Sample.from_values(list(range(96)), WINDOW, label=3)
    start = time.perf_counter()
    for i in range(rounds):
        wire = encode_message(sample, i & 0xFF)
    encode_s = time.perf_counter() - start
    reader = FrameReader()
    reader.feed(wire * rounds)
    start = time.perf_counter()
    for _ in range(rounds):
        decode_message(reader.next_frame())
    decode_s = time.perf_counter() - start
    return {"sample_frame_bytes": len(wire), "encode_per_s": round(rounds / encode_s),
            "decode_per_s": round(rounds / decode_s)}


def live(sim_binary: Path, samples: int, model_kb: int, workdir: Path) -> dict:
    rows = "".join(f"{i % 10} " + " ".join(str((i + k) % 1000) for k in range(96)) + "\n"
                   for i in range(samples))
    (workdir / "samples.txt").write_text(rows)
    modem = NullModem(record=False)
    sim = subprocess.Popen([str(sim_binary), modem.mcu_port, "--samples",
                            str(workdir / "samples.txt"), "--shape", "32x3",
                            "--model-capacity", str(model_kb * 1024)],
                           stdout=subprocess.DEVNULL)
    bridge = Bridge(BridgeConfig(port=modem.bridge_port, data_dir=workdir / "bridge"))
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        _wait(lambda: bridge.device is not None, 30)
        first = time.perf_counter()
        _wait(lambda: len(bridge.dataset) == samples, 300)
        samples_s = time.perf_counter() - first
        in_bytes = bridge.endpoint.stats.bytes_in
        blob = os.urandom(model_kb * 1024)
        out_before = bridge.endpoint.stats.bytes_out
        push_start = time.perf_counter()
        bridge.push_model(blob, 1)
        _wait(lambda: bridge.pushes, 300)
        push_s = time.perf_counter() - push_start
        push_wire = bridge.endpoint.stats.bytes_out - out_before
        assert bridge.pushes[0].confirmed, bridge.pushes[0].reason
    finally:
        stop.set()
        thread.join(10)
        sim.terminate()
        sim.wait(10)
        modem.close()
    return {
        "handshake_s": round(first - start, 3),
        "samples": samples, "samples_per_s": round(samples / samples_s, 1),
        "samples_wire_bytes": in_bytes,
        "samples_at_115200_baud_s": round(in_bytes / LINE_BYTES_PER_S, 2),
        "model_bytes": len(blob), "model_push_s": round(push_s, 3),
        "model_kb_per_s": round(len(blob) / 1024 / push_s, 1),
        "model_wire_bytes": push_wire,
        "model_wire_overhead": round(push_wire / len(blob) - 1, 4),
        "model_at_115200_baud_s": round(push_wire / LINE_BYTES_PER_S, 2),
        "retransmissions": bridge.endpoint.stats.retransmissions,
    }


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the link stalled")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--model-kb", type=int, default=48)
    parser.add_argument("--framing-rounds", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim = build_program("mcu_sim", Path(tmp))
        result = {"framing": framing(args.framing_rounds),
                  "pty_null_modem": live(sim, args.samples, args.model_kb, Path(tmp))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
