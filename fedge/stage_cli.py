"""`fedge aggregator rollback|promote|pin|stages`: operators steer model stages
(docs/lifecycle.md). The command is queued in the store; the running aggregator applies it
on its loop within a second and records it, with who asked, in the audit trail."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from pathlib import Path

from aggregator.lifecycle import Command
from aggregator.store import Store
from fedge.roles import load_aggregator_file

Handler = Callable[[argparse.Namespace], int]


def add_stage_parsers(actions: argparse._SubParsersAction) -> list[
        tuple[argparse.ArgumentParser, Handler]]:
    rollback = actions.add_parser("rollback", help="serve an earlier version again "
                                  "(production and any candidate are rolled back)")
    rollback.add_argument("--to", required=True, type=int, dest="version", metavar="N")
    promote = actions.add_parser("promote", help="serve version N now (and unpin)")
    promote.add_argument("version", type=int, metavar="N")
    pin = actions.add_parser("pin", help="serve version N; promote nothing automatically "
                             "until the next `promote`")
    pin.add_argument("version", type=int, metavar="N")
    stages = actions.add_parser("stages", help="each version's stage and the audit trail, "
                                "as JSON")
    return [(rollback, lambda a: _request(a, Command.ROLLBACK)),
            (promote, lambda a: _request(a, Command.PROMOTE)),
            (pin, lambda a: _request(a, Command.PIN)), (stages, _stages)]


def _open(config: Path) -> Store:
    """The aggregator's store: its SQLite file (which must exist) or its PostgreSQL
    database (db_url; ValueError naming db_url when it cannot be reached)."""
    settings = load_aggregator_file(config)[0]
    if not settings.db_url and not Path(settings.db_path).exists():
        raise ValueError(f"no store at {settings.db_path} (db_path in {config}): has the "
                         f"aggregator run?")
    return Store(settings.store_location)


def _request(args: argparse.Namespace, command: Command) -> int:
    store = _open(args.config)
    try:
        if args.version < 0 or store.stage_of(args.version) is None:
            raise ValueError(f"there is no model version {args.version} in the store")
        who = _who()
        request = store.request_stage(command, args.version, f"cli:{who}")
    finally:
        store.close()
    print(f"requested {command.value} {args.version} (request {request}, by {who}); the "
          "running aggregator applies it within a second and records it in the audit "
          f"trail: `fedge aggregator stages --config {args.config}`")
    return 0


def _stages(args: argparse.Namespace) -> int:
    store = _open(args.config)
    try:
        print(json.dumps({"stages": {str(v): s.value for v, s in store.stages().items()},
                          "audit": [c.to_json() for c in store.stage_audit()]}, indent=2))
    finally:
        store.close()
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "unknown"
