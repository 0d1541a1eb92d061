"""Updates sent and not yet acknowledged, and when each is due to be sent again.

Plain data with the time passed in: an update is resent `ack_timeout_s` after it was
last sent, until its ack arrives (or the device restarts, and sends it again on connect).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_client.outbox import OutboxEntry
from edge_client.shared.protocol import RemoteProtocolError
from edge_client.shared.protocol.lean_update import task_id_key
from edge_client.shared.protocol.messages import KNOWN_VERSIONS, unpack_map
from edge_client.shared.protocol.signing import is_signed, open_envelope


@dataclass
class Pending:
    payload: bytes = field(repr=False)  # the exact bytes in the outbox, resent unchanged
    last_sent: float = 0.0  # monotonic; 0: never sent by this run


class ResendSchedule:
    def __init__(self, ack_timeout_s: float) -> None:
        self.ack_timeout_s = ack_timeout_s
        self._pending: dict[str, Pending] = {}

    def add(self, nonce: str, payload: bytes) -> None:
        self._pending[nonce] = Pending(payload)

    def sent(self, nonce: str, now: float) -> bytes:
        """Note a (re)send at `now`; the payload to send."""
        pending = self._pending[nonce]
        pending.last_sent = now
        return pending.payload

    def acked(self, nonce: str) -> bool:
        """Drop an acknowledged update; False when it was not waiting (a second ack)."""
        return self._pending.pop(nonce, None) is not None

    def due(self, now: float) -> list[str]:
        return [nonce for nonce, p in self._pending.items()
                if now - p.last_sent > self.ack_timeout_s]

    def next_due(self) -> float | None:
        """When the oldest unacked update falls due; None when nothing waits."""
        if not self._pending:
            return None
        return min(p.last_sent for p in self._pending.values()) + self.ack_timeout_s

    def nonces(self) -> list[str]:
        return list(self._pending)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._pending

    def __len__(self) -> int:
        return len(self._pending)


def read_outbox(entries: Iterable[OutboxEntry]) -> tuple[list[tuple[OutboxEntry, str]],
                                                         list[tuple[str, str]]]:
    """Outbox entries found at start, with the task each answers; and (nonce, why) of
    those whose content cannot be read (to be set aside, never resent)."""
    readable, unreadable = [], []
    for entry in entries:
        try:
            body = (open_envelope(entry.payload).body if is_signed(entry.payload)
                    else entry.payload)
            update = unpack_map(body, KNOWN_VERSIONS)  # an update of version 1 or 2
            readable.append((entry, str(update[task_id_key(update)])))
        except (RemoteProtocolError, KeyError) as exc:
            unreadable.append((entry.nonce, str(exc)))
    return readable, unreadable
