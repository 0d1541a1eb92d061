"""Errors of the wire protocol.

Two kinds, as in h11: a peer that sent us something bad (`RemoteProtocolError`, answered
with a rejection and otherwise ignored) and our own misuse of the API
(`LocalProtocolError`, a bug to fix).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the protocol raises."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the network that we refuse; `reason` is sent back to the peer."""

    def __init__(self, reason: str, transfer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transfer = transfer


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol cannot express."""


def check_settings_map(raw: object, what: str, version: int, keys: tuple[str, ...],
                       error: type[RemoteProtocolError] = RemoteProtocolError) -> dict:
    """A versioned settings map from the aggregator (a task's dp or secagg field), with
    exactly `keys`: one place decides what an unknown version or key means."""
    if not isinstance(raw, dict):
        raise error(f"{what} settings must be a map")
    if raw.get("v") != version:
        raise error(f"{what} settings version {raw.get('v')!r} is not supported "
                    f"(this device speaks {version})")
    unknown = sorted(str(key) for key in raw if key not in keys)
    missing = [key for key in keys if key not in raw]
    if unknown or missing:
        raise error(f"{what} settings: unknown keys {unknown}, missing {missing}")
    return raw
