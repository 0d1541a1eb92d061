"""`fedge aggregator ...`: run the service, and the operator's few write actions.

serve          run the aggregator (SIGINT/SIGTERM stop it cleanly)
enroll         allow a device's public key (`fedge keys export` on the device prints it)
revoke         refuse a device from its next update on
audit          which devices went into which model version: ids, counts, digests
broker-config  write a mosquitto TLS + password + ACL setup for the federation's devices
check          is the store whole? what is damaged, what is lost (exit 1 when damaged)
recover        back the store's files up, rebuild what can be rebuilt, re-seal, report
rollback       serve an earlier model version again (--to N); promote N; pin N
stages         each version's stage and the audit trail (docs/lifecycle.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.broker_sizing import DEFAULT_UPDATE_CHUNKS, DROP_IN, FleetSize
from aggregator.service import Aggregator
from aggregator.store import Store
from aggregator.store_check import StoreDamaged, check_store
from aggregator.store_recover import recover_store
from edge_client.shared.identity import parse_public_key
from edge_client.shared.protocol.topics import check_name
from edge_client.shared.settings import ConfigError
from fedge.roles import build_aggregator, load_aggregator_file, run_until_signal
from fedge.stage_cli import add_stage_parsers

if TYPE_CHECKING:
    from aggregator.web.server import DashboardServer  # flask: the `aggregator` extra

log = logging.getLogger(__name__)


def add_aggregator_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregator", help="the gateway service and its admin actions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="aggregator_action", required=True)
    serve = actions.add_parser("serve", help="run the aggregator")
    serve.add_argument("--exit-when-done", action="store_true",
                       help="exit after the last round instead of serving on (acks, "
                            "statuses, dashboard) until SIGINT/SIGTERM; rounds = 0 never ends")
    enroll = actions.add_parser("enroll", help="allow a device's public key")
    enroll.add_argument("--device", required=True)
    enroll.add_argument("--key", required=True, help='"ed25519:..." from `fedge keys export`')
    revoke = actions.add_parser("revoke", help="refuse a device from now on")
    revoke.add_argument("--device", required=True)
    audit = actions.add_parser("audit", help="contributions per model version, as JSON")
    audit.add_argument("--version", type=int, help="only this model version")
    broker = actions.add_parser("broker-config", help="write mosquitto TLS, passwords, ACL")
    broker.add_argument("--out", required=True, type=Path, help="folder for the files")
    broker.add_argument("--devices", required=True, help="comma-separated device ids")
    broker.add_argument("--host", default="127.0.0.1", help="broker address and cert name")
    broker.add_argument("--port", type=int, default=8883)
    broker.add_argument("--mtls", action="store_true", help="require client certificates")
    broker.add_argument("--fleet", type=int, default=None, metavar="N",
                        help="size queues and the open-file limit for N devices "
                             "(default: the devices listed)")
    broker.add_argument("--update-chunks", type=int, default=DEFAULT_UPDATE_CHUNKS,
                        metavar="K", help="chunks in one update (model bytes / chunk_size; "
                                          f"default {DEFAULT_UPDATE_CHUNKS})")
    check = actions.add_parser("check", help="is the store whole? (exit 1 when damaged)")
    check.add_argument("--json", action="store_true", help="the report as JSON")
    recover = actions.add_parser("recover", help="back up, rebuild, re-seal a damaged store")
    recover.add_argument("--json", action="store_true", help="the report as JSON")
    for action, func in ((serve, _serve), (enroll, _enroll), (revoke, _revoke),
                         (audit, _audit), (broker, _broker_config), (check, _check),
                         (recover, _recover), *add_stage_parsers(actions)):
        action.add_argument("--config", required=True, type=Path,
                            help="the aggregator's TOML file")
        action.set_defaults(func=_reporting(func))


def _reporting(func):
    """User errors (config, keys, names) become a message and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ConfigError, ValueError, OSError) as exc:
            print(f"fedge aggregator {args.aggregator_action}: {exc}", file=sys.stderr)
            return 2
    return run


def _serve(args: argparse.Namespace) -> int:
    try:
        aggregator = build_aggregator(args.config)
    except StoreDamaged as exc:  # name the user's config in the commands to run
        raise StoreDamaged(exc.report, str(args.config)) from None
    cfg = aggregator.config
    secure = "on" if cfg.security.enabled else "off"
    rounds = f"{cfg.rounds} versions" if cfg.rounds else "versions until stopped"
    log.info("fedge aggregator: federation %r, %s mode, %s, broker %s:%d, store %s, model "
             "version %d, security %s", cfg.federation, cfg.mode, rounds, cfg.host, cfg.port,
             cfg.db_path, aggregator.version, secure)
    server = _start_dashboard(aggregator)
    try:
        run_until_signal(lambda stop: aggregator.run(stop, args.exit_when_done))
    finally:
        if server is not None:
            server.stop()
    return 0


def _start_dashboard(aggregator: Aggregator) -> DashboardServer | None:
    """The dashboard and REST API beside the service, when [dashboard] enabled = true."""
    dash = aggregator.config.dashboard
    if not dash.enabled:
        return None
    try:
        from aggregator.web import create_app, load_token, serve_dashboard
    except ImportError as exc:
        raise ValueError("the dashboard needs: pip install 'fedge[aggregator]'") from exc
    app = create_app(aggregator.config.db_path, load_token(dash.read_token_file),
                     load_token(dash.admin_token_file), actions=aggregator)
    server = serve_dashboard(app, dash.host, dash.port)
    print(f"fedge aggregator: dashboard on {server.url}", file=sys.stderr)
    return server


def _store(args: argparse.Namespace) -> Store:
    return Store(load_aggregator_file(args.config)[0].db_path)


def _enroll(args: argparse.Namespace) -> int:
    check_name("device", args.device)
    parse_public_key(args.key)  # refuse a malformed key before storing it
    _store(args).enroll(args.device, args.key.strip())
    print(f"enrolled {args.device}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke(args.device):
        raise ValueError(f"device {args.device!r} was never enrolled")
    print(f"revoked {args.device}; it is refused from its next update on")
    return 0


def _audit(args: argparse.Namespace) -> int:
    print(json.dumps(_store(args).audit(args.version), indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    report = check_store(load_aggregator_file(args.config)[0].db_path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
        if not report.ok:
            print(f"next: `fedge aggregator recover --config {args.config}` (it backs the "
                  "files up first; stop the service before)")
    return 0 if report.ok else 1


def _recover(args: argparse.Namespace) -> int:
    report = recover_store(load_aggregator_file(args.config)[0].db_path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _broker_config(args: argparse.Namespace) -> int:
    config = load_aggregator_file(args.config)[0]
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    size = FleetSize(max(1, len(devices)) if args.fleet is None else args.fleet,
                     args.update_chunks)
    files = write_broker_config(BrokerSecurityPlan(config.federation, devices, args.host,
                                                   args.port, args.mtls, fleet=size), args.out)
    print(f"wrote {files.conf}; passwords in {args.out / 'credentials'}; start it with "
          f"`mosquitto -c {files.conf}`")
    print(f"sized for {size.devices} devices: max_queued_messages {size.max_queued_messages}; "
          f"under systemd install {files.drop_in} as /etc/systemd/system/{DROP_IN} "
          f"(LimitNOFILE={size.open_files})")
    return 0
