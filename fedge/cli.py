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

from edge_client.blas_threads import limit_blas_threads
from edge_client.shared.settings import ConfigError
from fedge.log_format import setup_logging

if TYPE_CHECKING:
    from aggregator.service import VersionReport

Commands = argparse._SubParsersAction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedge", description=__doc__)
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = _chosen_command(argv)
    for name, add in COMMANDS:
        if chosen in (None, name):
            add(sub)
    args = parser.parse_args(argv)
    setup_logging(_log_level(args), args.log_format)
    limit_blas_threads(1)  # edge_client/blas_threads.py: far faster when the CPU is shared
    return args.func(args)


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more: DEBUG (the demo: INFO)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log only warnings and errors")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: one JSON object per line, for log shippers")


def _chosen_command(argv: list[str] | None) -> str | None:
    """The command named on the line, or None (--help, a typo, no command): then every
    command's parser is built, so help and errors list them all."""
    first = argparse.ArgumentParser(add_help=False)
    _add_global_options(first)
    first.add_argument("command", nargs="?")
    try:
        known, _ = first.parse_known_args(argv)
    except SystemExit:  # e.g. --log-format xml: the full parser says so
        return None
    names = [name for name, _ in COMMANDS]
    return known.command if known.command in names else None


def _add_aggregator(sub: Commands) -> None:
    from fedge.aggregator_cli import add_aggregator_parser
    add_aggregator_parser(sub)


def _add_device(sub: Commands) -> None:
    _add_role(sub, "device", "run a device client on local data from an .npz file", _device)


def _add_keys(sub: Commands) -> None:
    from fedge.keys_cli import add_keys_parser
    add_keys_parser(sub)


def _add_export(sub: Commands) -> None:
    from fedge.export_cli import add_export_parser
    add_export_parser(sub)


def _add_bridge(sub: Commands) -> None:
    from fedge.bridge_cli import add_bridge_parser
    add_bridge_parser(sub)


def _add_bundle(sub: Commands) -> None:
    from fedge.bundle_cli import add_bundle_parser
    add_bundle_parser(sub)


def _add_status(sub: Commands) -> None:
    from fedge.status_cli import add_status_parser
    add_status_parser(sub)


def _log_level(args: argparse.Namespace) -> int:
    """INFO by default, so a gateway and a device say what they do; the demo draws a
    progress bar instead and logs only warnings unless -v."""
    if args.quiet:
        return logging.WARNING
    if args.command == "demo":
        return logging.INFO if args.verbose else logging.WARNING
    return logging.DEBUG if args.verbose else logging.INFO


def _add_demo(sub: Commands) -> None:
    from fedge.demo_flags import add_demo_flags

    p = sub.add_parser("demo", help="run a whole federation on this machine")
    add_demo_flags(p)
    p.set_defaults(func=_demo)


def _add_role(sub: Commands, name: str, help_text: str,
              func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, type=Path, help="the role's TOML file")
    p.set_defaults(func=func)


def _device(args: argparse.Namespace) -> int:
    from fedge.roles import build_device_run, run_until_signal

    try:
        device = build_device_run(args.config)
    except ConfigError as exc:
        print(f"fedge device: {exc}", file=sys.stderr)
        return 2
    from edge_client.device_io import TrainerFailed
    try:
        run_until_signal(device.run)
    except TrainerFailed as exc:
        print(f"fedge device: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fedge.demo import run_demo
    from fedge.demo_flags import demo_from_flags
    from fedge.progress import ProgressBar

    try:
        demo = demo_from_flags(args)
    except ValueError as exc:
        print(f"fedge demo: {exc}", file=sys.stderr)
        return 2
    config, fleet = demo.aggregator, demo.fleet
    who = (f"{fleet.sites} sites x {fleet.devices_per_site} devices" if fleet.sites
           else f"{fleet.devices} devices")
    bar = ProgressBar(config.rounds, f"fedge demo ({config.mode}, {who})")
    if fleet.dashboard_port is None:  # else the bar starts below the dashboard's address
        bar.show(0, "starting")

    def on_version(report: VersionReport) -> None:
        bar.show(report.version, f"accuracy {report.metrics.get('accuracy', 0):.3f}")

    # SIGTERM (a service manager, `kill`, a test harness) unwinds like Ctrl-C, so the
    # demo's `with` blocks stop the broker it started instead of leaving it running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_demo(demo, on_version=on_version)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        bar.close()
        print(f"fedge demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print("fedge demo: interrupted; the broker and devices were stopped", file=sys.stderr)
        return 130
    bar.close()
    if "tiers" in summary:
        from fedge.tiers.demo import print_tier_summary

        print_tier_summary(summary, sys.stderr if args.json else sys.stdout)
    else:
        _print_summary(summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary))
    return 0


def rollout_lines(r: dict | None) -> list[str]:
    """The demo's staged rollout in two lines (fedge/rollout_demo.py)."""
    if r is None:
        return []
    bad = (f"; bad candidate v{r['bad_version']} served by "
           f"{', '.join(r['bad_version_served_by']) or 'no device'}"
           if r["bad_version"] is not None else "")
    return [f"rollout           promoted {_versions(r['promoted'])}; rolled back "
            f"{_versions(r['rolled_back'])}; production v{r['production']}{bad}"]


def _versions(versions: list[int]) -> str:
    return " ".join(f"v{v}" for v in versions) or "none"


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
        *_heterogeneity_lines(s),
        *_drift_lines(s),
        *rollout_lines(s.get("rollout")),
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


def _heterogeneity_lines(s: dict) -> list[str]:
    """--personalize and --clusters: the devices' own figures (docs/heterogeneity.md)."""
    def fixed(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"
    lines = []
    if s.get("personal"):
        p = s["personal"]
        lines.append(f"personalised      {p['mode']}: personal {fixed(p['personal_accuracy'])}"
                     f", global {fixed(p['global_accuracy'])} (means over devices, on "
                     f"their held-out data)")
    if s.get("clusters"):
        c = s["clusters"]
        members = ", ".join(f"{d}: {k}" for d, k in c["membership"].items())
        lines.append(f"clusters          k {c['k']}: {members}; test accuracy "
                     f"{' '.join(fixed(a) for a in c['test_accuracy'])}")
    if s.get("weighting"):
        lines.append(f"weighting         {s['weighting']}")
    return lines


def _drift_lines(s: dict) -> list[str]:
    d = s.get("drift")
    if not d:
        return []
    opened = "; ".join(f"campaign {c['number']} at version {c['at_version']} (until "
                       f"{c['until_version']}) by {', '.join(c['devices'])}"
                       for c in d["campaigns"]) or "no campaign opened"
    return [f"drift             round {d['at_round']}: {', '.join(d['shifted_devices']) or 'none'}"
            f" shifted; {opened}"]


def _reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(),
                                                             key=lambda kv: -kv[1]))


# In the order `fedge --help` lists them. A command's module is imported only when that
# command runs (or for the full help), so `fedge device` loads neither the aggregator nor
# the demo: see docs/raspberry-pi.md#footprint.
COMMANDS: list[tuple[str, Callable[[Commands], None]]] = [
    ("demo", _add_demo), ("aggregator", _add_aggregator), ("device", _add_device),
    ("keys", _add_keys), ("export", _add_export), ("bridge", _add_bridge),
    ("status", _add_status), ("bundle", _add_bundle)]


if __name__ == "__main__":
    sys.exit(main())
