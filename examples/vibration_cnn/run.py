"""A QAT 1D-CNN federated across simulated machines on synthetic vibration, served as int8.

    .venv/bin/python examples/vibration_cnn/run.py [--devices 5] [--rounds 15] [--seed 0]
                                                   [--json] [--out DIR] [--workdir DIR]

One machine runs everything: an MQTT broker (mosquitto, or the embedded amqtt
fallback), the gateway's Aggregator, and one EdgeClient per simulated machine, each
with only its own machine's vibration windows. They train the int8-aware 1D-CNN over
MQTT for --rounds sync rounds; one device serves every global model it receives with
an int8 onnxruntime Predictor (hot swaps). Then the final global model is exported to
int8 ONNX and served on held-out windows from every machine. Prints a summary; with
--json, one JSON object on stdout (progress goes to stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples.vibration_cnn` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.service import Aggregator, VersionReport
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.predictor import Predictor
from edge_client.shared.protocol import TrainConfig
from edge_client.training import NumpyTrainer, build_model
from examples.vibration_cnn.export_and_serve import FinalModel, export_and_serve
from examples.vibration_cnn.serving import HotSwapLog
from examples.vibration_cnn.synthetic import (
    CLASSES,
    SAMPLE_RATE_HZ,
    WINDOW,
    Machine,
    balanced_labels,
    make_fleet,
    windows,
)
from fedge.broker import BrokerHandle, start_broker

# Two conv blocks see the shaft harmonics (tens of ms) and the bearing's ringing (a few
# ms); 7,652 weights, a 13 KB int8 ONNX. "qat": devices train the int8 model they serve.
ARCH: dict[str, Any] = {"kind": "sequential", "input_shape": [WINDOW, 3], "qat": True,
                        "layers": [
    {"type": "conv1d", "filters": 8, "kernel": 7, "stride": 2}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2},
    {"type": "conv1d", "filters": 16, "kernel": 5, "stride": 1}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 32}, {"type": "relu"},
    {"type": "dense", "units": len(CLASSES)}]}
FEDERATION = "vibration"


@dataclass
class ExampleConfig:
    devices: int = 5
    rounds: int = 15
    seed: int = 0
    windows_per_device: int = 400  # a machine's labelled log
    test_windows_per_machine: int = 160  # held out on the gateway, every class alike
    check_windows: int = 100  # the serving device's own labelled windows
    alpha: float = 1.0  # Dirichlet concentration of each machine's class mix
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.5
    broker: str = "auto"  # auto | mosquitto | embedded
    out: Path | None = None  # keep the .onnx files here
    workdir: Path | None = None  # the store and device state; a temporary folder if None
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 64:
            raise ValueError(f"devices must be 1 to 64, not {self.devices}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, not {self.rounds}")
        if min(self.windows_per_device, self.test_windows_per_machine,
               self.check_windows) < 1:
            raise ValueError("windows_per_device, test_windows_per_machine and "
                             "check_windows must be >= 1")


@dataclass
class Data:
    machines: list[Machine]
    shards: list[tuple[np.ndarray, np.ndarray]]  # each device's own windows
    x_test: np.ndarray  # held out on the gateway: every machine, every class
    y_test: np.ndarray
    x_check: np.ndarray  # device 0's labelled windows for checking what it serves
    y_check: np.ndarray


def make_data(cfg: ExampleConfig) -> Data:
    """Everything from one seeded Generator, so a seed gives the same run's data."""
    rng = np.random.default_rng(cfg.seed)
    machines = make_fleet(cfg.devices, rng, cfg.alpha)
    shards = [windows(m, cfg.windows_per_device, rng) for m in machines]
    tests = [windows(m, cfg.test_windows_per_machine, rng,
                     balanced_labels(cfg.test_windows_per_machine, rng)) for m in machines]
    x_check, y_check = windows(machines[0], cfg.check_windows, rng)
    return Data(machines, shards, np.concatenate([x for x, _ in tests]),
                np.concatenate([y for _, y in tests]), x_check, y_check)


def run_example(cfg: ExampleConfig, broker: BrokerHandle | None = None,
                on_version: Callable[[VersionReport], None] | None = None) -> dict[str, Any]:
    """Federate, export, serve; returns the summary. Starts a broker unless given one."""
    started = time.monotonic()
    data = make_data(cfg)
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="fedge-vibration-"))
    own_broker = broker is None
    broker = start_broker(cfg.broker) if broker is None else broker
    try:
        aggregator = _aggregator(cfg, data, broker, workdir, on_version)
        serving = HotSwapLog(Predictor(runtime="onnxruntime", int8=True),
                             data.x_check, data.y_check)
        clients = [_device(cfg, i, data.shards[i], broker, workdir,
                           serving.on_model if i == 0 else None)
                   for i in range(cfg.devices)]
        _run_all(aggregator, clients, cfg.timeout_s)
    finally:
        if own_broker:
            broker.stop()
    federated_s = time.monotonic() - started
    final = FinalModel(aggregator.version, aggregator.arch, aggregator.global_weights)
    served = export_and_serve(final, data.x_test, data.y_test, cfg.out)
    history = [h.to_json() for h in aggregator.history if h.version > 0]
    return {
        "devices": cfg.devices,
        "rounds": cfg.rounds,
        "seed": cfg.seed,
        "broker": broker.kind,
        "classes": list(CLASSES),
        "chance_accuracy": round(1 / len(CLASSES), 4),
        "window": {"samples": WINDOW, "axes": 3, "sample_rate_hz": SAMPLE_RATE_HZ},
        "machines": [_machine_summary(m, y)
                     for m, (_, y) in zip(data.machines, data.shards, strict=True)],
        "accuracy_per_round": [round(h["accuracy"], 4) for h in history],
        "final": served,
        "device_serving": {"device": clients[0].config.device_id, **serving.summary()},
        "bytes_up": sum(c.stats.bytes_up for c in clients),
        "bytes_down": sum(c.stats.bytes_down for c in clients),
        "wall_s": {"total": round(time.monotonic() - started, 2),
                   "federation": round(federated_s, 2),
                   "export_and_serve": round(time.monotonic() - started - federated_s, 2)},
        "workdir": str(workdir),
    }


def _aggregator(cfg: ExampleConfig, data: Data, broker: BrokerHandle, workdir: Path,
                on_version: Callable[[VersionReport], None] | None) -> Aggregator:
    """Sync rounds with every device; each new version scored on the held-out windows."""
    scorer = NumpyTrainer(build_model(ARCH, seed=cfg.seed))

    def evaluate(weights: dict[str, np.ndarray]) -> dict[str, float]:
        scorer.set_weights(weights)
        return scorer.evaluate(data.x_test, data.y_test)  # the QAT (int8-simulating) forward

    config = AggregatorConfig(
        federation=FEDERATION, host=broker.host, port=broker.port,
        db_path=workdir / "aggregator.sqlite3", rounds=cfg.rounds, seed=cfg.seed,
        train=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                          momentum=cfg.momentum),
        sync=SyncConfig(target_updates=cfg.devices, round_timeout_s=120.0,
                        wait_for_devices_s=30.0))
    initial = NumpyTrainer(build_model(ARCH, seed=cfg.seed)).get_weights()
    return Aggregator(config, initial_weights=initial, arch=ARCH, evaluate=evaluate,
                      on_version=on_version)


def _device(cfg: ExampleConfig, index: int, shard: tuple[np.ndarray, np.ndarray],
            broker: BrokerHandle, workdir: Path,
            on_model: Callable[[int, dict, dict], None] | None) -> EdgeClient:
    """One machine's device. Eligibility is off: a simulated machine has no battery,
    and this host's /sys says nothing about it (fedge demo fakes the files instead)."""
    config = ClientConfig(device_id=f"machine-{index}", federation=FEDERATION,
                          host=broker.host, port=broker.port,
                          state_dir=workdir / f"machine-{index}",
                          eligibility=EligibilityConfig(enabled=False))
    trainer = NumpyTrainer(build_model(ARCH, seed=cfg.seed + 1 + index))
    return EdgeClient(config, trainer, *shard, on_model=on_model)


def _run_all(aggregator: Aggregator, clients: list[EdgeClient], timeout_s: float) -> None:
    """Every party on its own thread; the first error anywhere stops them all."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(run: Callable[[threading.Event], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                run(stop)
            except BaseException as exc:  # reported below, in the caller's thread
                errors.append(exc)
                stop.set()
        return target

    threads = [threading.Thread(target=guarded(aggregator.run), name="aggregator",
                                daemon=True)]
    threads += [threading.Thread(target=guarded(c.run), name=c.config.device_id, daemon=True)
                for c in clients]
    for thread in threads:
        thread.start()
    threads[0].join(timeout_s)
    timed_out = threads[0].is_alive()
    if timed_out or errors:
        stop.set()
    for thread in threads:
        thread.join(30)
    stop.set()
    if errors:
        raise RuntimeError(f"{errors[0]!r} stopped the federation") from errors[0]
    if timed_out:
        raise TimeoutError(f"the federation did not finish within {timeout_s:.0f} s")


def _machine_summary(machine: Machine, labels: np.ndarray) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return {"name": machine.name, "rpm": list(machine.rpm), "gain": list(machine.gain),
            "noise_g": machine.noise_g, "resonance_hz": machine.resonance_hz,
            "windows": int(counts.sum()),
            "class_counts": dict(zip(CLASSES, map(int, counts), strict=True))}


def print_summary(s: dict[str, Any], stream: TextIO) -> None:
    final, serving = s["final"], s["device_serving"]
    sizes = final["sizes_bytes"]
    lines = [
        f"broker                {s['broker']}, {s['devices']} devices, {s['rounds']} rounds",
        f"accuracy by round     {' '.join(f'{a:.3f}' for a in s['accuracy_per_round'])}",
        f"final (held out, {final['test_windows']} windows, chance {s['chance_accuracy']})",
        f"  float32             {final['float_accuracy']:.4f}",
        f"  QAT numpy forward   {final['qat_numpy_accuracy']:.4f}",
        f"  int8 onnxruntime    {final['int8_onnxruntime_accuracy']:.4f} (argmax agreement "
        f"with QAT numpy {final['int8_vs_qat_numpy_argmax_agreement']:.4f})",
        "  int8 recall         " + ", ".join(f"{k} {v:.3f}" for k, v in
                                              final["int8_recall_per_class"].items()),
        f"model                 {final['parameters']} weights; float32 ONNX "
        f"{sizes['onnx_float32']} B, int8 ONNX {sizes['onnx_int8']} B",
        f"device serving        {serving['device']}: {serving['swaps']} hot swaps "
        f"(versions {serving['versions_served'][:1]}..{serving['versions_served'][-1:]}), "
        f"local accuracy {serving['local_accuracy_per_version'][-1:]}",
        f"traffic               up {s['bytes_up'] / 1e6:.2f} MB, down "
        f"{s['bytes_down'] / 1e6:.2f} MB",
        f"wall time             {s['wall_s']['total']:.1f} s (federation "
        f"{s['wall_s']['federation']:.1f} s)",
        f"aggregator store      {s['workdir']}/aggregator.sqlite3",
    ]
    lines += [f"wrote                 {path}" for path in final["files"].values()]
    print("\n".join(lines), file=stream)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5, help="simulated machines (1-64)")
    parser.add_argument("--rounds", type=int, default=15, help="sync rounds")
    parser.add_argument("--seed", type=int, default=0, help="data, model and selection seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--out", type=Path, help="folder to keep the float32 and int8 .onnx")
    parser.add_argument("--workdir", type=Path,
                        help="the aggregator's store and device state (default: a new "
                             "temporary folder, kept for `fedge export --db`)")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = sys.stderr if args.json else sys.stdout

    def on_version(report: VersionReport) -> None:
        print(f"round {report.round:3d}  model version {report.version:3d}  accuracy "
              f"{report.metrics.get('accuracy', float('nan')):.3f}  "
              f"({report.updates} updates, {report.round_wall_s:.2f} s)", file=progress,
              flush=True)

    try:
        cfg = ExampleConfig(devices=args.devices, rounds=args.rounds, seed=args.seed,
                            broker=args.broker, out=args.out, workdir=args.workdir)
        summary = run_example(cfg, on_version=on_version)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        print(f"vibration_cnn failed: {exc}", file=sys.stderr)
        return 1
    print_summary(summary, progress)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
