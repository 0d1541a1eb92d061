"""Who is still in a secure-aggregation round, who left in which phase and why, and
whether enough remain for the round to finish (aggregator/secagg/server.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_client.shared.secagg.errors import RoundAborted
from edge_client.shared.secagg.phases import Phase


@dataclass(frozen=True)
class Dropout:
    """A device that left the round, the phase whose message it did not send, and why."""

    phase: str
    reason: str


class RoundMembers:
    """The round's live devices among `ids`, and the dropouts; every shortfall raises
    RoundAborted with the phase and the numbers."""

    def __init__(self, ids: Sequence[str], graph: dict[str, tuple[str, ...]],
                 threshold: int) -> None:
        self.alive: set[str] = set(ids)  # still expected to answer
        self.dropouts: dict[str, Dropout] = {}
        self.graph = graph
        self.threshold = threshold

    def drop_silent(self, phase: Phase, answered: set[str]) -> None:
        """Those who sent nothing in `phase` leave the round (but for unmasking)."""
        for u in sorted(self.alive - answered):
            self.dropouts[u] = Dropout(phase.value, "sent nothing before the phase closed")
        if phase is Phase.UNMASKING:
            return  # their inputs are already in the sum; they just cannot help unmask
        self.alive &= answered

    def prune(self, phase: Phase, reason: str) -> None:
        """Drop devices with fewer than t live neighbours until none is left (they could
        not share, or have their secrets rebuilt), then check enough devices remain."""
        changed = True
        while changed:
            short = {u for u in self.alive
                     if len(set(self.graph[u]) & self.alive) < self.threshold}
            for u in sorted(short):
                self.dropouts[u] = Dropout(phase.value, reason)
            self.alive -= short
            changed = bool(short)
        self.need_survivors(phase, self.alive)

    def need_survivors(self, phase: Phase, alive: set[str]) -> None:
        if len(alive) < self.threshold + 1:
            raise RoundAborted(phase.value, f"only {len(alive)} devices remain; a round needs "
                                            f"at least threshold + 1 = {self.threshold + 1}")

    def need_holders(self, phase: Phase, owner: str, what: str, holders: set[str]) -> None:
        if len(holders) < self.threshold:
            raise RoundAborted(phase.value, f"the {what} of {owner!r} cannot be rebuilt: only "
                                            f"{len(holders)} of its share holders remain, "
                                            f"{self.threshold} needed")
