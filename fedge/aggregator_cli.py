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

from aggregator.broker_bridge import BridgePlan, bridge_section
from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.broker_sizing import DEFAULT_UPDATE_CHUNKS, DROP_IN, FleetSize
from aggregator.lifecycle.config import canary_privacy_caution
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
    from aggregator.config import AggregatorConfig
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
    broker.add_argument("--devices", help="comma-separated device ids (of an upper tier: "
                                          "its sites)")
    broker.add_argument("--bridge-to", metavar="HOST:PORT",
                        help="instead: write this site's bridge to the upper broker, from "
                             "the config's [upper] table (docs/tiers.md)")
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
    if cfg.upper.enabled:
        rounds = "versions until the upper tier finishes"
    log.info("fedge aggregator: federation %r, %s mode, %s, broker %s:%d, store %s, model "
             "version %d, security %s", cfg.federation, cfg.mode, rounds, cfg.host, cfg.port,
             cfg.store_name, aggregator.version, secure)
    caution = canary_privacy_caution(cfg.rollout, cfg.privacy.enabled, cfg.secagg.enabled)
    if caution is not None:
        log.warning("fedge aggregator: %s", caution)
    server = _start_dashboard(aggregator)
    run = aggregator.run
    if cfg.upper.enabled:  # a site of an upper tier: its uplink runs beside it
        from fedge.tiers.site import SiteGateway

        run = SiteGateway(aggregator).run
        log.info("fedge aggregator: site %r of the upper federation %r at %s:%d, an "
                 "aggregate every %d version(s)", cfg.upper.site_id, cfg.upper.federation,
                 cfg.upper.host, cfg.upper.port, cfg.upper.every_versions)
    try:
        run_until_signal(lambda stop: run(stop, args.exit_when_done))
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
    app = create_app(aggregator.config.store_location, load_token(dash.read_token_file),
                     load_token(dash.admin_token_file), actions=aggregator)
    server = serve_dashboard(app, dash.host, dash.port)
    print(f"fedge aggregator: dashboard on {server.url}", file=sys.stderr)
    return server


def _store(args: argparse.Namespace) -> Store:
    return Store(load_aggregator_file(args.config)[0].store_location)


def _sqlite_file(args: argparse.Namespace) -> Path:
    """The store's SQLite file; ValueError for a PostgreSQL store (check and recover
    read SQLite's files, its WAL and the seal: PostgreSQL has its own tools)."""
    config = load_aggregator_file(args.config)[0]
    if config.db_url:
        raise ValueError(f"{args.config}: db_url puts the store in PostgreSQL; `check` and "
                         "`recover` are SQLite-only (use PostgreSQL's pg_amcheck and "
                         "backups)")
    return config.db_path


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
    report = check_store(_sqlite_file(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
        if not report.ok:
            print(f"next: `fedge aggregator recover --config {args.config}` (it backs the "
                  "files up first; stop the service before)")
    return 0 if report.ok else 1


def _recover(args: argparse.Namespace) -> int:
    report = recover_store(_sqlite_file(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _broker_config(args: argparse.Namespace) -> int:
    config = load_aggregator_file(args.config)[0]
    if args.bridge_to is not None:
        return _bridge_config(config, args.bridge_to, args.out)
    if args.devices is None:
        raise ValueError("broker-config needs --devices (or --bridge-to for a site's bridge)")
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


def _bridge_config(config: AggregatorConfig, where: str, out: Path) -> int:
    """A site broker's bridge section: [upper] names the site and the upper federation,
    its [upper.broker_auth] the password and CA the bridge uses on the upper broker."""
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--bridge-to must be HOST:PORT, not {where!r}")
    upper, auth = config.upper, config.upper.broker_auth
    password = Path(auth.password_file).read_text().strip() if auth.password_file else None
    plan = BridgePlan(upper.site_id, upper.federation, host, int(port), password,
                      Path(auth.ca_file) if auth.ca_file else None)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bridge-{upper.site_id}.conf"
    path.touch(mode=0o640)  # it may hold the site's password
    path.write_text(bridge_section(plan))
    print(f"wrote {path}; add it to the site broker's config (`include_dir {out}` or "
          f"append it) and give the upper broker the user {upper.site_id!r} (broker-config "
          f"--devices with the upper tier's config)")
    return 0
