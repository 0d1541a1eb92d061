"""Errors of the wire protocol.

Two kinds, as in h11: a peer that sent us something bad (`RemoteProtocolError`, answered
with a rejection and otherwise ignored) and our own misuse of the API
(`LocalProtocolError`, a bug to fix).
"""

from __future__ import annotations

MAX_REASON = 2000  # characters: the longest reason an Ack or a Status may carry


def cap_reason(reason: str, limit: int = MAX_REASON) -> str:
    """`reason` cut to `limit` characters, ending in an ellipsis when cut: the one place
    that keeps every reason we log, store or send back decodable by the other side."""
    if len(reason) <= limit:
        return reason
    return reason[:limit - 3] + "..."


class ProtocolError(Exception):
    """Base class of every error the protocol raises."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the network that we refuse; `reason` is sent back to the peer."""

    def __init__(self, reason: str, transfer: str | None = None) -> None:
        reason = cap_reason(str(reason))
        super().__init__(reason)
        self.reason = reason
        self.transfer = transfer


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol cannot express."""


def check_settings_map(raw: object, what: str, version: int, keys: tuple[str, ...],
                       error: type[RemoteProtocolError] = RemoteProtocolError) -> dict:
    """A versioned settings map from the aggregator (a task's dp or secagg field), with
    exactly `keys`: one place decides what an unknown version or key means."""
    from edge_client.shared.protocol.bounds import check_plain, describe, is_int  # imports us

    if not isinstance(raw, dict):
        raise error(f"{what} settings must be a map")
    try:
        check_plain(raw, f"{what} settings", max_depth=1, max_items=64)
    except RemoteProtocolError as exc:
        raise error(exc.reason) from None
    if not is_int(raw.get("v")) or raw.get("v") != version:
        raise error(f"{what} settings version {describe(raw.get('v'))} is not supported "
                    f"(this device speaks {version})")
    unknown = sorted(str(key)[:64] for key in raw if key not in keys)[:10]
    missing = [key for key in keys if key not in raw]
    if unknown or missing:
        raise error(f"{what} settings: unknown keys {unknown}, missing {missing}")
    return raw
