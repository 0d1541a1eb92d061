"""The stored updates that wait for the next version: a small record each, and the
round's running sum they are folded into as they arrive (aggregator/strategy/folding.py).

The records say who sent what (device, task, nonce, samples, the device's metrics, the
message size): the version's info and the store need them, never the tensors. The values
go into the accumulator the strategy starts; a mean-based strategy keeps one vector of
the model's size, whatever the cohort. When the accumulator has to start over (a
restart, a strategy switch, a device a DP clip must see whole), the round is folded
again from the store, one update at a time (`refold`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aggregator.privacy.dp_folding import DeviceRepeated
from aggregator.strategy.folding import Accumulator, Arrival, FlatUpdate
from edge_client.shared.protocol import Update
from edge_client.shared.protocol.tensors import flatten_sorted


@dataclass(frozen=True)
class PendingRecord:
    """One pending update without its values."""

    device_id: str
    task_id: str
    nonce: str
    base_version: int
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    size: int = 0  # message bytes

    @classmethod
    def of(cls, update: Update, size: int) -> PendingRecord:
        return cls(update.device_id, update.task_id, update.nonce, update.base_version,
                   update.num_samples, dict(update.metrics), size)


Begin = Callable[[frozenset[str]], Accumulator]  # a fresh sum; the devices seen twice
Folded = tuple[PendingRecord, FlatUpdate, float]  # a record, its values, staleness factor
Source = Callable[[], Iterable[Folded]]  # the pending updates again, from the store


class PendingUpdates:
    def __init__(self) -> None:
        self.records: list[PendingRecord] = []
        self._begin: Begin | None = None
        self._source: Source | None = None
        self._acc: Accumulator | None = None
        self._repeated: frozenset[str] = frozenset()

    def attach(self, begin: Begin, source: Source) -> None:
        """How to start a round's sum (from the current strategy and model), and where
        the pending updates can be read again (the store, in arrival order)."""
        self._begin = begin
        self._source = source
        self._acc = None

    def add(self, update: Update, size: int, values: FlatUpdate | None = None,
            staleness_factor: float = 1.0) -> None:
        """Record `update` and fold its values (by default its dense tensors)."""
        if values is None and update.tensors:
            flat = flatten_sorted(update.tensors)
            values = FlatUpdate(flat, flat.shape[0])
        self.add_record(PendingRecord.of(update, size), values, staleness_factor)

    def add_record(self, record: PendingRecord, values: FlatUpdate | None,
                   staleness_factor: float) -> None:
        self.records.append(record)
        if values is None or self._begin is None:
            return
        acc = self._accumulator()
        try:
            acc.fold(_arrival(record, staleness_factor), values)
        except DeviceRepeated as repeat:  # the update is stored: fold the round again
            self._repeated = self._repeated | {repeat.device_id}
            self.refold()

    def accumulator(self) -> Accumulator:
        """The round's sum, with every pending update folded in."""
        return self._accumulator()

    def refold(self, everything: bool = False) -> None:
        """Start the sum again and fold the pending updates into it, read from the store
        one at a time: every update stored as pending (`everything`, at a restart), else
        only those this round already has (a version the strategy refused in async mode
        leaves its updates pending in the store, but not here)."""
        if self._begin is None or self._source is None:
            return
        known = {(r.device_id, r.task_id, r.nonce) for r in self.records}
        while True:
            self.records = []
            self._acc = self._begin(self._repeated)
            try:
                for record, values, factor in self._source():
                    if everything or (record.device_id, record.task_id, record.nonce) in known:
                        self.records.append(record)
                        self._acc.fold(_arrival(record, factor), values)
                return
            except DeviceRepeated as repeat:  # fold again, that device summed apart
                self._repeated = self._repeated | {repeat.device_id}

    def clear(self) -> None:
        self.records = []
        self._acc = None
        self._repeated = frozenset()

    def __len__(self) -> int:
        return len(self.records)

    def devices(self) -> list[str]:
        return [r.device_id for r in self.records]

    def message_bytes(self) -> int:
        return sum(r.size for r in self.records)

    def _accumulator(self) -> Accumulator:
        if self._acc is None:
            if self._begin is None:
                raise RuntimeError("pending updates: no strategy attached")
            self._acc = self._begin(self._repeated)
        return self._acc


def _arrival(record: PendingRecord, factor: float) -> Arrival:
    cluster = record.metrics.get("cluster")  # a clustered federation's devices name theirs
    group = int(cluster) if isinstance(cluster, int | float) and cluster == cluster else None
    return Arrival(record.device_id, record.nonce, record.num_samples, factor, group,
                   record.metrics)
