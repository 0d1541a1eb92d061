"""`fedge bridge`: one microcontroller on a serial port joins through this Linux device.

    fedge bridge --port /dev/ttyUSB0 --data-dir /var/lib/fedge/mcu
    fedge bridge --port /dev/ttyACM0 --data-dir DIR --device-config device.toml --scale 0.0625

Without --device-config it collects: samples into DIR/samples, predictions, logs and
model confirmations into DIR/events.jsonl, and pushes --push-model once. With it, an
edge client (the `fedge device` TOML, without [data]) trains on the MCU's labelled
samples and every new global model goes back to the MCU as a full-int8 .tflite.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_client.client import ClientConfig, EdgeClient
from edge_client.shared.settings import ConfigError, from_table, read_toml
from fedge.roles import ModelSpec, check_data_fits
from firmware_bridge.bridge import Bridge, BridgeConfig, open_serial
from firmware_bridge.federation import ModelRelay
from firmware_bridge.model_push import check_model

log = logging.getLogger(__name__)


def add_bridge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bridge", help="connect a microcontroller on a serial port",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BridgeConfig(port="", data_dir=Path("."))
    p.add_argument("--port", required=True,
                   help="serial device (/dev/ttyUSB0) or pyserial URL (socket://host:port)")
    p.add_argument("--baud", type=int, default=d.baud)
    p.add_argument("--data-dir", required=True, type=Path,
                   help="samples, events.jsonl; kept across restarts")
    p.add_argument("--max-samples", type=int, default=d.max_samples,
                   help="keep at most this many samples; the oldest go first")
    p.add_argument("--ack-timeout", type=float, default=d.ack_timeout_s,
                   help="seconds before an unacknowledged frame is resent")
    p.add_argument("--retries", type=int, default=d.max_retries)
    p.add_argument("--push-model", type=Path, metavar="FILE",
                   help="send this model file (e.g. an int8 .tflite) to the MCU once")
    p.add_argument("--model-version", type=int, default=1, help="version for --push-model")
    p.add_argument("--device-config", type=Path, metavar="TOML",
                   help="also join a federation as a device that trains on the MCU's data")
    p.add_argument("--min-samples", type=int, default=100,
                   help="with --device-config: labelled samples to collect before joining")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply sample values by this for training (raw counts to units)")
    p.add_argument("--export-npz", type=Path, metavar="FILE",
                   help="on exit, write the labelled samples as x, y (what `fedge device` reads)")
    p.set_defaults(func=run_bridge)


def build_mcu_client(path: Path, bridge: Bridge, scale: float,
                     relay: ModelRelay) -> EdgeClient:
    """The `fedge device` TOML, with the MCU's samples as its data and the relay as on_model."""
    config, spec = load_device_config(path)
    trainer = spec.trainer()
    x, y = bridge.dataset.arrays(scale=scale)
    check_data_fits(trainer, x, y, "the MCU's samples")
    return EdgeClient(config, trainer, x, y, on_model=relay.on_model)


def load_device_config(path: Path) -> tuple[ClientConfig, ModelSpec]:
    """The device TOML's settings and [model] ([data] is left out); any mistake in them is
    a ConfigError."""
    table = read_toml(path)
    model_table = table.pop("model", {})
    table.pop("data", None)
    config = from_table(ClientConfig, table, str(path), also_known=("data", "model"))
    spec = from_table(ModelSpec, model_table, "[model]")
    spec.trainer()  # a [model] that cannot be built fails here too
    return config, spec


def run_bridge(args: argparse.Namespace) -> int:
    try:
        config = BridgeConfig(port=args.port, data_dir=args.data_dir, baud=args.baud,
                              max_samples=args.max_samples, ack_timeout_s=args.ack_timeout,
                              max_retries=args.retries)
        model = args.push_model.read_bytes() if args.push_model else None
        if model is not None:
            check_model(model, args.model_version)
        if args.device_config is not None:  # a mistake in it fails now, not after waiting
            load_device_config(args.device_config)
            if "data" in read_toml(args.device_config):
                log.warning("bridge: [data] in %s is ignored: the device trains on the MCU's "
                            "samples", args.device_config)
        port = open_serial(config.port, config.baud, config.read_timeout_s)
    except (ConfigError, ValueError, OSError, ImportError) as exc:
        print(f"fedge bridge: {exc}", file=sys.stderr)
        return 2
    bridge = Bridge(config, port=port,  # reopened after a failure (USB unplugged)
                    opener=lambda: open_serial(config.port, config.baud,
                                               config.read_timeout_s))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if model is not None:
        bridge.push_model(model, args.model_version)
    failures: list[BaseException] = []
    serving = threading.Thread(target=_serve, args=(bridge, stop, failures), name="bridge")
    serving.start()
    status = 0
    try:
        if args.device_config is not None:
            status = _federate(args, bridge, stop)
        stop.wait()
    finally:
        stop.set()
        serving.join()
    if failures:
        print(f"fedge bridge: the bridge stopped: {failures[0]!r}", file=sys.stderr)
        status = 1
    if args.export_npz is not None:
        count = bridge.dataset.export_npz(args.export_npz, scale=args.scale)
        print(f"wrote {count} labelled samples to {args.export_npz}")
    _print_summary(bridge)
    return status


def _serve(bridge: Bridge, stop: threading.Event, failures: list[BaseException]) -> None:
    """The bridge's loop; if it dies, the whole command stops instead of waiting for a
    Ctrl-C with nothing serving the port."""
    try:
        bridge.run(stop)
    except Exception as exc:
        log.exception("bridge: the serial loop failed")
        failures.append(exc)
    finally:
        stop.set()


def _federate(args: argparse.Namespace, bridge: Bridge, stop: threading.Event) -> int:
    """Wait for enough labelled samples, then run the edge client until it finishes."""
    while not stop.is_set() and not _enough_labelled(bridge, args.min_samples):
        stop.wait(1.0)
    if stop.is_set():
        return 0
    relay = ModelRelay(bridge)
    held = len(bridge.dataset)  # before the client reads it: later samples are all new
    try:
        client = build_mcu_client(args.device_config, bridge, args.scale, relay)
    except (ConfigError, ValueError) as exc:
        print(f"fedge bridge: {exc}", file=sys.stderr)
        stop.set()
        return 2
    log.info("bridge: joining the federation with %d samples from the MCU", len(client.x))
    checker = load_device_config(args.device_config)[1].trainer()  # not the client's: it trains

    def fits(x: np.ndarray, y: np.ndarray) -> None:
        check_data_fits(checker, x, y, "the MCU's samples")
    refresher = threading.Thread(target=_refresh_data, name="bridge-data", daemon=True,
                                 args=(client, bridge, held, args.scale, stop, 5.0, fits))
    refresher.start()
    client.run(stop)  # returns when the federation is done (exit_when_done) or on stop
    return 0


def _refresh_data(client: EdgeClient, bridge: Bridge, held: int, scale: float,
                  stop: threading.Event, every_s: float = 5.0,
                  fits: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
    """Samples keep coming from the MCU while the device federates: hand them to the
    client, which trains on them from its next task on. `held` is the dataset's length
    when the client got its data (read by the caller, so samples that come before this
    thread runs still count as new). `fits` raises ConfigError for data the model cannot
    train on, which the client then never gets."""
    while not stop.wait(every_s):
        if len(bridge.dataset) == held:
            continue
        held = len(bridge.dataset)
        x, y = bridge.dataset.arrays(scale=scale)
        try:
            if fits is not None:
                fits(x, y)
        except ConfigError as exc:  # e.g. a label the model has no class for
            log.warning("bridge: the device keeps training on its earlier data: %s", exc)
            continue
        client.set_data(x, y)
        log.info("bridge: the device now trains on %d samples from the MCU", len(y))


def _enough_labelled(bridge: Bridge, wanted: int) -> bool:
    """Cheap count first; the disk is read only once enough samples of any kind are in."""
    return len(bridge.dataset) >= wanted and len(bridge.dataset.arrays()[1]) >= wanted


def _print_summary(bridge: Bridge) -> None:
    s, link = bridge.stats, bridge.endpoint.stats
    device = bridge.device.device_id if bridge.device else "none"
    confirmed = bridge.confirmed_versions
    print(f"device {device}; samples {s.samples} (held {len(bridge.dataset)}), predictions "
          f"{s.predictions}, logs {s.logs}; models confirmed {confirmed or 'none'}; frames in "
          f"{link.frames_in}, out {link.frames_out}, resent {link.retransmissions}, bad "
          f"{sum(s.frame_errors.values())}")
