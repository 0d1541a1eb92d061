"""`fedge keys`: create a device's or the aggregator's key, show it, export its public half.

Exit codes: 0 when done, 2 for a user error (the file is missing, already there, too
open or not a key), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge_client.shared.identity import Identity, create_identity, file_mode, load_identity

Action = Callable[[argparse.Namespace], int]


def add_keys_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `keys` and its actions to the `fedge` command's subparsers."""
    keys = subparsers.add_parser("keys", help="manage this party's Ed25519 signing key")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    _add_action(actions, "create", "create a new private key; never overwrites one", _create)
    _add_action(actions, "show", "print the key id, public key and file permissions", _show)
    _add_action(actions, "export", "print only the public key, for enrolment", _export)


def _add_action(actions: argparse._SubParsersAction, name: str, help_text: str,
                func: Action) -> None:
    p = actions.add_parser(name, help=help_text)
    p.add_argument("--path", required=True, type=Path, help="the private key file (PEM)")
    p.set_defaults(func=_reporting_errors(name, func))


def _reporting_errors(name: str, func: Action) -> Action:
    """Turn the errors a user can fix into a message and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (OSError, ValueError) as exc:
            print(f"fedge keys {name}: {_reason(exc)}", file=sys.stderr)
            return 2
    return run


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _create(args: argparse.Namespace) -> int:
    identity = create_identity(args.path)
    print(f"created {args.path}")
    _print_identity(identity, args.path)
    return 0


def _show(args: argparse.Namespace) -> int:
    _print_identity(load_identity(args.path), args.path)
    return 0


def _export(args: argparse.Namespace) -> int:
    print(load_identity(args.path).public_text)
    return 0


def _print_identity(identity: Identity, path: Path) -> None:
    print(f"key_id:      {identity.key_id}")
    print(f"public_key:  {identity.public_text}")
    print(f"permissions: {file_mode(path):04o} {path}")


def main(argv: list[str] | None = None) -> int:
    """Run `keys` on its own (python -m fedge.keys_cli ...), before it is wired into fedge."""
    parser = argparse.ArgumentParser(prog="fedge")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
