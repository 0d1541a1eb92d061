"""Who shares secrets with whom: the neighbour graph of a round and its threshold.

Classic SecAgg (Bonawitz et al. 2017) has every device mask with and share its secrets
among all others: per-device cost grows with n. SecAgg+ (Bell et al. 2020) does both
only along a sparse random graph of degree k = O(log n). Ours is a Harary graph on a
random ring: the participants are ordered by a hash of the public round seed and their
id, and each is joined to the k/2 nearest on either side. Every party recomputes the
same graph from the seed, so the server cannot hand a device neighbours of its choosing.

Threshold t = max(2, k // 3 + 1): the shares of a device's secrets reveal nothing to
fewer than t of its neighbours (so up to t - 1 colluding neighbours plus the server learn
nothing), and its secrets can be rebuilt while at most k - t of them drop out.

Degree: the smallest even k >= 2 * ceil(log2 n) for which, if each device drops out
independently with probability `dropout` (default 0.3), the chance that any device keeps
fewer than t live neighbours is below `failure` (default 2**-20; the union bound
n * P[Binomial(k, dropout) > k - t]). When that k reaches n - 1 the graph is complete,
which is classic SecAgg.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_DROPOUT = 0.3
DEFAULT_FAILURE = 2.0**-20
MIN_PARTICIPANTS = 3


def threshold_for(degree: int) -> int:
    """Shares needed to rebuild a secret of a device with `degree` neighbours."""
    return max(2, degree // 3 + 1)


def sparse_degree(n: int, dropout: float = DEFAULT_DROPOUT,
                  failure: float = DEFAULT_FAILURE) -> int:
    """The SecAgg+ degree for `n` devices (see the module docstring); n - 1 means complete."""
    _check_count(n)
    if not (0.0 <= dropout < 1.0 and 0.0 < failure < 1.0):
        raise ValueError(f"need 0 <= dropout < 1 and 0 < failure < 1, not {dropout}, {failure}")
    k = 2 * math.ceil(math.log2(n))
    while k < n - 1:
        if n * _too_few_alive(k, threshold_for(k), dropout) <= failure:
            return k
        k += 2
    return n - 1


def _too_few_alive(k: int, t: int, dropout: float) -> float:
    """P[more than k - t of k neighbours drop], each independently with prob. `dropout`."""
    return sum(math.comb(k, j) * dropout**j * (1.0 - dropout) ** (k - j)
               for j in range(k - t + 1, k + 1))


@dataclass(frozen=True)
class GraphParams:
    """Degree k of the neighbour graph and Shamir threshold t; see the module docstring."""

    degree: int
    threshold: int

    @classmethod
    def complete(cls, n: int) -> GraphParams:
        """Classic SecAgg: everyone is everyone's neighbour."""
        _check_count(n)
        return cls(degree=n - 1, threshold=threshold_for(n - 1))

    @classmethod
    def sparse(cls, n: int, dropout: float = DEFAULT_DROPOUT,
               failure: float = DEFAULT_FAILURE) -> GraphParams:
        """SecAgg+: degree O(log n) sized to survive `dropout` with probability 1 - failure."""
        k = sparse_degree(n, dropout, failure)
        return cls(degree=k, threshold=threshold_for(k))

    def problem(self, n: int) -> str | None:
        """Why these parameters cannot work for `n` participants, or None."""
        if n < MIN_PARTICIPANTS:
            return f"need at least {MIN_PARTICIPANTS} participants, not {n}"
        if not 2 <= self.degree <= n - 1:
            return f"degree must be in [2, {n - 1}] for {n} participants, not {self.degree}"
        if self.degree < n - 1 and self.degree % 2:
            return f"a sparse graph needs an even degree, not {self.degree}"
        if not 2 <= self.threshold <= self.degree:
            return f"threshold must be in [2, degree={self.degree}], not {self.threshold}"
        return None


def ring_order(participants: Sequence[str], round_seed: bytes) -> list[str]:
    """The participants in the seed's random ring order (a hash sort, the same everywhere)."""
    def key(device: str) -> tuple[bytes, str]:
        digest = hashlib.sha256(b"fedge-secagg/v1/ring\0" + round_seed + device.encode())
        return digest.digest(), device
    return sorted(participants, key=key)


def neighbour_graph(participants: Sequence[str], degree: int,
                    round_seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each participant's sorted neighbours: all others if degree >= n - 1, else the ring's."""
    ids = sorted(participants)
    if degree >= len(ids) - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    ring = ring_order(ids, round_seed)
    return {u: _ring_neighbours(ring, i, degree) for i, u in enumerate(ring)}


def neighbours_of(device: str, participants: Sequence[str], degree: int,
                  round_seed: bytes) -> tuple[str, ...]:
    """One participant's sorted neighbours, without building the whole graph."""
    ids = sorted(participants)
    if degree >= len(ids) - 1:
        return tuple(v for v in ids if v != device)
    ring = ring_order(ids, round_seed)
    return _ring_neighbours(ring, ring.index(device), degree)


def _ring_neighbours(ring: list[str], i: int, degree: int) -> tuple[str, ...]:
    n, half = len(ring), degree // 2
    return tuple(sorted(ring[(i + j) % n] for j in range(-half, half + 1) if j))


def _check_count(n: int) -> None:
    if n < MIN_PARTICIPANTS:
        raise ValueError(f"secure aggregation needs at least {MIN_PARTICIPANTS} devices, not {n}")
