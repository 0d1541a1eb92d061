"""The `fedge` command: demo, aggregator, device, keys, export, bridge, status, bundle."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aggregator.strategy import STRATEGIES
from edge_client.blas_threads import limit_blas_threads
from edge_client.shared.settings import ConfigError
from fedge.aggregator_cli import add_aggregator_parser
from fedge.bridge_cli import add_bridge_parser
from fedge.bundle_cli import add_bundle_parser
from fedge.demo import DP_MODES, DemoConfig, check_demo, model_versions, run_demo
from fedge.export_cli import add_export_parser
from fedge.keys_cli import add_keys_parser
from fedge.log_format import setup_logging
from fedge.poisoning import ATTACKS
from fedge.progress import ProgressBar
from fedge.roles import build_device, run_until_signal
from fedge.status_cli import add_status_parser

if TYPE_CHECKING:
    from aggregator.service import VersionReport


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more: DEBUG (the demo: INFO)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log only warnings and errors")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object per line, for log shippers")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    add_aggregator_parser(sub)
    _add_role(sub, "device", "run a device client on local data from an .npz file", _device)
    add_keys_parser(sub)
    add_export_parser(sub)
    add_bridge_parser(sub)
    add_status_parser(sub)
    add_bundle_parser(sub)
    args = parser.parse_args(argv)
    setup_logging(_log_level(args), args.log_format)
    limit_blas_threads(1)  # edge_client/blas_threads.py: far faster when the CPU is shared
    return args.func(args)


def _log_level(args: argparse.Namespace) -> int:
    """INFO by default, so a gateway and a device say what they do; the demo draws a
    progress bar instead and logs only warnings unless -v."""
    if args.quiet:
        return logging.WARNING
    if args.command == "demo":
        return logging.INFO if args.verbose else logging.WARNING
    return logging.DEBUG if args.verbose else logging.INFO


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a whole federation on this machine")
    d = DemoConfig()
    p.add_argument("--devices", type=int, default=d.devices)
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="rounds of device work; async makes rounds*devices/buffer versions")
    p.add_argument("--mode", choices=("sync", "async"), default=d.mode)
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default=d.broker)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet label skew")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--buffer-size", type=int, default=d.buffer_size,
                   help="async: aggregate every K updates")
    p.add_argument("--uplink", default=d.uplink,
                   help="update codec, e.g. 'topk=0.01,q4', 'randk=0.05,q8', 'f16', 'dense' "
                        "(default: topk=0.01,q4 in sync mode, q8 in async mode or with "
                        "--dp central; --secagg sends its own fixed-point integers)")
    p.add_argument("--downlink", default=d.downlink,
                   help="model delta codec, e.g. 'q8', 'q4'; 'full' sends whole models only")
    p.add_argument("--full-model", choices=("f32", "f16"), default=d.full_model,
                   help="precision of whole models sent to devices")
    p.add_argument("--profile", choices=("always", "diurnal"), default=d.profile,
                   help="device behaviour: always eligible, or simulated days of charging, "
                        "use and flaky Wi-Fi")
    p.add_argument("--day-s", type=float, default=d.day_s,
                   help="diurnal: wall seconds per simulated day")
    p.add_argument("--secure", action="store_true",
                   help="TLS, passwords and per-device ACLs at mosquitto; signed updates, "
                        "models, tasks and acks; every device enrolled")
    p.add_argument("--workdir", help="keep the SQLite store and device state here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON last")
    p.add_argument("--dashboard", type=int, metavar="PORT", default=d.dashboard_port,
                   help="serve the gateway dashboard while the federation runs, on "
                        "127.0.0.1:PORT only (0: a free port), without tokens: anyone on "
                        "this machine can read it; needs the aggregator extra")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation of sync rounds: the aggregator sees only the "
                        "sum of the updates (replaces --uplink; needs >= 3 devices)")
    p.add_argument("--dp", choices=DP_MODES, default=d.dp,
                   help="differential privacy: central (the aggregator clips and adds noise) "
                        "or distributed (each device does; needs --secagg)")
    p.add_argument("--noise-multiplier", type=float, default=d.noise_multiplier,
                   help="DP: z, the noise std over the clip")
    p.add_argument("--clip", type=float, default=d.clip,
                   help="DP: C, the L2 bound on each device's update (default: about the "
                        "median update norm of the demo job)")
    p.add_argument("--target-epsilon", type=float, default=d.target_epsilon,
                   help="DP: stop training before epsilon (at delta 1e-5) would pass this; "
                        "0: no budget")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default=d.strategy,
                   help="aggregation rule: fedavg, a server optimizer or a robust rule")
    p.add_argument("--attackers", type=int, default=d.attackers, metavar="K",
                   help="the first K devices send poisoned updates")
    p.add_argument("--attack", choices=tuple(ATTACKS), default=d.attack,
                   help="sign_flip: the honest update reversed; scale10: boosted tenfold")
    p.set_defaults(func=_demo)


def _add_role(sub: argparse._SubParsersAction, name: str, help_text: str,
              func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, type=Path, help="the role's TOML file")
    p.set_defaults(func=func)


def _device(args: argparse.Namespace) -> int:
    try:
        client = build_device(args.config)
    except ConfigError as exc:
        print(f"fedge device: {exc}", file=sys.stderr)
        return 2
    run_until_signal(client.run)
    return 0


def _demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(devices=args.devices, rounds=args.rounds, mode=args.mode,
                     broker=args.broker, seed=args.seed, alpha=args.alpha,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, buffer_size=args.buffer_size,
                     uplink=args.uplink, downlink=args.downlink, profile=args.profile,
                     day_s=args.day_s, secure=args.secure, full_model=args.full_model,
                     workdir=args.workdir, dashboard_port=args.dashboard,
                     secagg=args.secagg, dp=args.dp, noise_multiplier=args.noise_multiplier,
                     clip=args.clip, target_epsilon=args.target_epsilon,
                     strategy=args.strategy, attackers=args.attackers, attack=args.attack)
    try:
        check_demo(cfg)
    except ValueError as exc:
        print(f"fedge demo: {exc}", file=sys.stderr)
        return 2
    bar = ProgressBar(model_versions(cfg), f"fedge demo ({cfg.mode}, {cfg.devices} devices)")
    if cfg.dashboard_port is None:  # else the bar starts below the dashboard's address
        bar.show(0, "starting")

    def on_version(report: VersionReport) -> None:
        bar.show(report.version, f"accuracy {report.metrics.get('accuracy', 0):.3f}")

    # SIGTERM (a service manager, `kill`, a test harness) unwinds like Ctrl-C, so the
    # demo's `with` blocks stop the broker it started instead of leaving it running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_demo(cfg, on_version=on_version)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        bar.close()
        print(f"fedge demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("fedge demo: interrupted; the broker and devices were stopped", file=sys.stderr)
        return 130
    bar.close()
    _print_summary(summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_summary(s: dict, stream: TextIO) -> None:
    lines = [
        f"broker            {s['broker']}",
        f"mode              {s['mode']}, {s['devices']} devices, {s['rounds']} rounds, "
        f"{s['model_versions']} model versions",
        f"final accuracy    {s['final_accuracy']:.4f}",
        f"accuracy by round {' '.join(f'{a:.3f}' for a in s['accuracy_per_version'])}",
        f"uplink            {s['bytes_up'] / 1e6:.2f} MB ({s['uplink_codec']}, updates "
        f"{s['uplink_compression']}x smaller than float32)",
        f"downlink          {s['bytes_down'] / 1e6:.2f} MB ({s['downlink_codec']} deltas, "
        f"{s['models_via_delta']} models rebuilt from deltas)",
        f"wall time         {s['wall_s']:.2f} s; median round {s['round_wall_s_median']:.3f} s, "
        f"median local training {s['train_s_median']:.3f} s",
        f"security          {'TLS + passwords + ACLs, signed messages' if s['secure'] else 'off'}"
        f"; rejected updates {s['rejected_updates']}",
        f"devices           {s['profile']} profile; skipped device-rounds: "
        f"{_reasons(s['skipped_by_reason'])}; stopped mid-training "
        f"{s['stopped_mid_training']}, late {s['late_updates']}",
        f"aggregation       {s['strategy']}; attackers "
        f"{', '.join(s['attackers']) + ' (' + s['attack'] + ')' if s['attackers'] else 'none'}",
        *_privacy_lines(s),
        f"store             {s['workdir'] or 'removed with the run (--workdir DIR keeps it)'}",
    ]
    print("\n".join(lines), file=stream)


def _privacy_lines(s: dict) -> list[str]:
    lines = []
    if s.get("secagg"):
        a = s["secagg"]
        lines.append(f"secure aggregation {a['secure_rounds']} secure rounds; contributors "
                     f"{' '.join(map(str, a['contributors_per_round']))}; dropouts "
                     f"{' '.join(map(str, a['dropouts_per_round']))}; "
                     f"{a['bytes_per_device_round'] / 1e3:.1f} kB per device per round")
    if s.get("privacy"):
        p = s["privacy"]
        budget = f"target {p['target_epsilon']:g}" if p["target_epsilon"] else "no budget"
        stopped = "; the budget stopped training" if p["budget_stopped_training"] else ""
        lines.append(f"privacy           {p['mode']} DP, z {p['noise_multiplier']:g}, clip "
                     f"{p['clip']:g}: epsilon {p['epsilon']:.2f} at delta {p['delta']:g} "
                     f"({budget}){stopped}")
    return lines


def _reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(),
                                                             key=lambda kv: -kv[1]))


if __name__ == "__main__":
    sys.exit(main())
