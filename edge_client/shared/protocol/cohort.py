"""Who a task invites, without listing them: both sides derive it from a round seed.

A device is in a task's cohort when the keyed hash of its id under the task's seed is
below the task's cutoff. The aggregator ranks the devices it could invite by that hash,
takes the first `count`, and sends the seed and the cutoff that admits exactly those
(of its candidates): a task stays the same size for 10 devices or 10,000, and every
device decides on its own, the same way, whether it is invited (docs/protocol.md,
"Cohorts").
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

RANK_BITS = 53  # ranks and cutoffs fit a float64 and the decoders' integer bound
EVERYONE = 2**RANK_BITS  # a cutoff above every rank: the whole fleet is invited
_PERSON = b"fedge-cohort"


def rank(seed: int, device_id: str) -> int:
    """The device's place in the draw of round `seed`: uniform in [0, 2**53)."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=8, person=_PERSON,
                             key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") >> (64 - RANK_BITS)


@dataclass(frozen=True)
class Cohort:
    """The invitation of one task: a device is in when rank(seed, id) < cutoff."""

    seed: int  # 0 <= seed < 2**53, drawn per task
    cutoff: int  # 0 <= cutoff <= 2**53 (EVERYONE: every device)
    size: int  # the candidates inside the cutoff when the aggregator planned
    candidates: int  # the devices it could invite then

    def includes(self, device_id: str) -> bool:
        return self.cutoff >= EVERYONE or rank(self.seed, device_id) < self.cutoff

    def members(self, devices: Iterable[str]) -> list[str]:
        """Those of `devices` that are in, sorted."""
        return sorted(d for d in devices if self.includes(d))

    @property
    def fraction(self) -> float:
        """The share of any device id's chance of being in: cutoff / 2**53."""
        return min(1.0, self.cutoff / EVERYONE)

    def to_wire(self) -> dict[str, int]:
        return {"seed": self.seed, "cutoff": self.cutoff, "size": self.size,
                "candidates": self.candidates}


@dataclass(frozen=True)
class Draw:
    """One task's invitation as the aggregator planned it."""

    cohort: Cohort
    extra: tuple[str, ...]  # proven devices invited by name to top the round up
    members: tuple[str, ...]  # the candidates invited, either way, sorted


def draw(seed: int, candidates: Collection[str], count: int,
         proven: Collection[str] | None = None, open_ended: bool = True) -> Draw:
    """The cohort of `count` of `candidates`. When that is all of them, `open_ended`
    invites every device (EVERYONE), those that come later too; else the cutoff stops
    just past the last candidate (a bound on how many train: aggregator/concurrency.py).

    With `proven` (the devices with a track record), when fewer than `count` of the
    drawn devices are proven, the next proven ones in the ranking are invited by name
    (`extra`, at most `count`): newcomers that never show up cannot hold a round
    (aggregator/presence.py), and the task grows with the round, never with the fleet.
    """
    ranked = sorted(candidates, key=lambda d: (rank(seed, d), d))
    taken = min(count, len(ranked))
    if taken == 0:
        cutoff = 0  # nobody (no candidates, or no room)
    elif taken >= len(ranked) and open_ended:
        cutoff = EVERYONE
    else:
        cutoff = rank(seed, ranked[taken - 1]) + 1
    plain = Cohort(seed, cutoff, 0, len(ranked))
    # equal ranks past `taken` (a 2**-53 chance) are in too: count what the cutoff admits
    inside = [d for d in ranked if plain.includes(d)]
    extra: list[str] = []
    if proven is not None:
        missing = count - sum(1 for d in inside if d in proven)
        extra = [d for d in ranked if d in proven and not plain.includes(d)][:max(0, missing)]
    cohort = Cohort(seed, cutoff, len(inside), len(ranked))
    return Draw(cohort, tuple(sorted(extra)), tuple(sorted([*inside, *extra])))
