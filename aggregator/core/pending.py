"""The stored updates that wait for the next version, with the size each came in."""

from __future__ import annotations

from edge_client.shared.protocol import Update


class PendingUpdates:
    def __init__(self) -> None:
        self.updates: list[Update] = []
        self._sizes: dict[str, int] = {}  # message bytes of each, by nonce

    def add(self, update: Update, size: int) -> None:
        self.updates.append(update)
        self._sizes[update.nonce] = size

    def clear(self) -> None:
        self.updates = []
        self._sizes.clear()

    def __len__(self) -> int:
        return len(self.updates)

    def devices(self) -> list[str]:
        return [u.device_id for u in self.updates]

    def message_bytes(self) -> int:
        return sum(self._sizes.get(u.nonce, 0) for u in self.updates)
