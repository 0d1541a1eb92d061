"""What a device counts about its own participation (the demo summary reads these)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ClientStats:
    updates_sent: int = 0
    acks: Counter = field(default_factory=Counter)
    acked: list[tuple[str, str]] = field(default_factory=list)  # (nonce, status) as received
    train_s: list[float] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    skipped: Counter = field(default_factory=Counter)  # tasks not done, by reason
    stopped_mid_training: int = 0
    partial_updates: int = 0  # updates sent from fits cut short (deadline, budget, trainer)
    sleeps: int = 0  # times it went off the broker until the aggregator's check-in time
    update_bytes: int = 0  # encoded update messages made
    dense_bytes: int = 0  # what those updates would be as dense float32
    models_via_delta: int = 0
    bad_messages: int = 0  # inbound messages refused or that failed to handle
