"""`fedge status`: the federation at a glance in the terminal, from the gateway's store.

    fedge status --config aggregator.toml [--watch [SECONDS]] [--json] [--devices N|all]
    fedge status --db aggregator.sqlite3
    fedge status --url http://gateway:8080 [--token-file read.token]   (the REST API)
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from aggregator.status import FleetStatus, fleet_status
from aggregator.store import Store
from aggregator.store_db import StoreLocation, describe, store_errors
from edge_client.shared.settings import ConfigError
from fedge.roles import load_aggregator_file

DEVICE_ROWS = 50  # device lines `fedge status` prints by default


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the federation at a glance: version, round, devices",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the aggregator's TOML file (its db_path)")
    where.add_argument("--db", type=Path, help="the aggregator's SQLite store")
    where.add_argument("--url", help="the gateway's dashboard, e.g. http://gateway:8080")
    p.add_argument("--token-file", type=Path, help="with --url: a file holding the read token")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object (per redraw)")
    p.add_argument("--devices", default=str(DEVICE_ROWS), metavar="N|all",
                   help=f"device rows to print, the idle ones first (default {DEVICE_ROWS}; "
                        "'all' for every device; --json always has them all)")
    p.set_defaults(func=_status)


def _device_rows(text: str) -> int | None:
    """--devices: a whole number >= 0, or 'all' (None: no cap); ValueError else."""
    if text == "all":
        return None
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"--devices must be a whole number or 'all', not {text[:20]!r}")
    return int(text)


def _status(args: argparse.Namespace) -> int:
    try:
        rows = _device_rows(args.devices)
        read = _from_api(args) if args.url else _from_store(_db_path(args))
    except (ConfigError, ValueError) as exc:
        print(f"fedge status: {exc}", file=sys.stderr)
        return 2
    if args.watch is not None and not args.watch > 0:
        print(f"fedge status: --watch must be > 0 seconds, not {args.watch}", file=sys.stderr)
        return 2
    try:
        while True:
            try:
                status, where = read()
            except ConfigError as exc:
                print(f"fedge status: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps(status.to_json()), flush=True)
            else:
                if args.watch is not None:
                    print("\033[2J\033[H", end="")  # clear the terminal, cursor home
                print(render(status, where, rows), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _from_store(db: StoreLocation) -> Callable[[], tuple[FleetStatus, str]]:
    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError, *store_errors(db))

    def read() -> tuple[FleetStatus, str]:
        try:
            store = Store(db)
            try:
                return fleet_status(store), describe(db)
            finally:
                store.close()
        except ValueError as exc:  # PostgreSQL unreachable: one line naming db_url
            raise ConfigError(str(exc)) from None
        except errors as exc:
            raise ConfigError(f"cannot read the store {describe(db)}: {exc}") from None
    return read


def _from_api(args: argparse.Namespace) -> Callable[[], tuple[FleetStatus, str]]:
    """GET /api/status of a running gateway, with the read token if one is given."""
    headers = {}
    if args.token_file is not None:
        try:
            headers["Authorization"] = f"Bearer {args.token_file.read_text().strip()}"
        except OSError as exc:
            raise ConfigError(f"--token-file {args.token_file}: {exc.strerror}") from None
    url = args.url.rstrip("/") + "/api/status"

    def read() -> tuple[FleetStatus, str]:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"{url} answered {exc.code} {exc.reason}"
                              + (" (a read token is needed: --token-file)"
                                 if exc.code in (401, 403) else "")) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
        try:
            return FleetStatus.from_json(body), url
        except ValueError as exc:
            raise ConfigError(f"{url}: {exc}") from None
    return read


def _db_path(args: argparse.Namespace) -> StoreLocation:
    if args.db is None and (config := load_aggregator_file(args.config)[0]).db_url:
        return config.db_url
    path = args.db if args.db is not None else config.db_path
    if not Path(path).is_file():
        raise ConfigError(f"no aggregator store at {path} (has `fedge aggregator serve` "
                          f"run with this config?)")
    return Path(path)


def render(s: FleetStatus, where: object, device_rows: int | None = None) -> str:
    """Plain lines a person reads top to bottom: the model, the round, the devices.

    At most `device_rows` device lines (None: all), the idle ones first: at fleet size
    the counts above them are the overview, and the devices that do not train are what
    a person looks for; the rest are counted in a closing line."""
    lines = [f"from        {where}"]
    if s.model_version is None:
        lines.append("model       none yet")
    else:
        accuracy = f", accuracy {s.accuracy:.4f}" if s.accuracy is not None else ""
        lines.append(f"model       version {s.model_version} ({s.versions} made{accuracy}; "
                     f"last {_ago(s.last_version_s_ago)})")
    if s.finished:
        lines.append("training    finished: every round is done")
    elif s.stopped:
        lines.append(f"training    stopped: {s.stopped}")
    if s.broker is not None:
        state = ("connected" if s.broker["connected"]
                 else f"not connected ({s.broker['reason'] or 'unknown'})")
        lines.append(f"broker      {state} since {_ago(time.time() - s.broker['since'])}")
    if s.tier is not None:
        lines.append(f"tier        {s.tier}")
    lines.append(_round_line(s))
    online = [d for d in s.devices if d.online]
    eligible = [d for d in online if d.eligible]
    summary = f"devices     {len(s.devices)} known, {len(online)} online, {len(eligible)} eligible"
    if s.not_eligible:
        summary += "; not eligible: " + ", ".join(f"{n} {why}"
                                                  for why, n in s.not_eligible.items())
    lines.append(summary)
    shown = sorted(s.devices, key=lambda d: (d.online and d.eligible, d.device_id))
    for d in shown[:device_rows]:
        state = ("offline" if not d.online else "eligible" if d.eligible
                 else f"not eligible: {d.reason}")
        version = f"v{d.model_version}" if d.model_version is not None else "-"
        lines.append(f"  {d.device_id:<20} {version:>6}  {state}  "
                     f"(seen {_ago(d.last_seen_s_ago)})")
    if device_rows is not None and len(shown) > device_rows:
        lines.append(f"  ... and {len(shown) - device_rows:,} more (--devices all lists "
                     "every one)")
    lines.append(f"rejections  {s.rejections_total} in all")
    for r in s.recent_rejections:
        lines.append(f"  {_ago(r.s_ago):>10}  {r.device_id}: {r.reason[:120]}")
    return "\n".join(lines)


def _round_line(s: FleetStatus) -> str:
    r = s.round
    if r is None:
        return "round       none open"
    wanted = f"of {r.invited} invited" if r.invited is not None else "(open to all)"
    deadline = ""
    if r.deadline_in_s is not None:
        deadline = (f", deadline in {r.deadline_in_s:.0f} s" if r.deadline_in_s >= 0
                    else f", deadline passed {-r.deadline_in_s:.0f} s ago")
    return (f"round       {r.round} ({r.mode}, from version {r.model_version}): {r.updates} "
            f"updates {wanted}, open {r.opened_s_ago:.0f} s{deadline}")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
