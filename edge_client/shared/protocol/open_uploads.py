"""Which chunked uploads are open, with O(1) bookkeeping per chunk.

The Assembler asks three questions of every chunk: which upload expires first (start
order), which of one source's uploads to drop for its new one (the least recently active),
and, at the global limit, whose upload to drop. That last answer is fair per source:
the least recently active upload of the least recently active source among those holding
the most open uploads. A flood from one device id loses its own uploads first; a flood
from many ids loses its stalled uploads before an honest device's upload that is still
receiving chunks. Each answer costs O(1) (amortized), however many uploads are open.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, str]  # (source, transfer)


class OpenUploads:
    def __init__(self) -> None:
        self._started: OrderedDict[Key, None] = OrderedDict()  # oldest start first
        self._by_source: dict[str, OrderedDict[str, None]] = {}  # least recently active first
        self._by_count: dict[int, OrderedDict[str, None]] = {}  # sources by open uploads
        self._top = 0  # the largest count with a source in it

    def __len__(self) -> int:
        return len(self._started)

    def __contains__(self, key: Key) -> bool:
        return key in self._started

    def count(self, source: str) -> int:
        transfers = self._by_source.get(source)
        return len(transfers) if transfers else 0

    def add(self, key: Key) -> None:
        source, transfer = key
        self._started[key] = None
        transfers = self._by_source.setdefault(source, OrderedDict())
        self._regroup(source, len(transfers), len(transfers) + 1)
        transfers[transfer] = None

    def touch(self, key: Key) -> None:
        """A chunk arrived for `key`: it and its source become the most recently active."""
        source, transfer = key
        self._by_source[source].move_to_end(transfer)
        self._by_count[len(self._by_source[source])].move_to_end(source)

    def remove(self, key: Key) -> None:
        source, transfer = key
        del self._started[key]
        transfers = self._by_source[source]
        del transfers[transfer]
        self._regroup(source, len(transfers) + 1, len(transfers))
        if not transfers:
            del self._by_source[source]

    def oldest_started(self) -> Key | None:
        return next(iter(self._started), None)

    def idlest_of(self, source: str) -> Key:
        """The source's least recently active upload."""
        return source, next(iter(self._by_source[source]))

    def victim(self) -> Key:
        """Whose upload to drop at the global limit (see the module's docstring)."""
        source = next(iter(self._by_count[self._top]))
        return self.idlest_of(source)

    def _regroup(self, source: str, old: int, new: int) -> None:
        if old:
            group = self._by_count[old]
            del group[source]
            if not group:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, OrderedDict())[source] = None
        if new > self._top:
            self._top = new
        while self._top and self._top not in self._by_count:
            self._top -= 1  # falls by at most what add raised it: amortized O(1)
