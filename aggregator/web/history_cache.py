"""The model history, parsed once per new version rather than on every request.

A version's record (its info: contributors, fairness and personal figures with a row per
device) is written once and never changed, and at fleet size the records of 30 versions
are megabytes of JSON: parsing them for each of the dashboard's polls (the overview,
the versions, the fairness and personal tables, /metrics) was most of the poll's time.
The app keeps the parsed history of the latest state of the models table, checked by
a one-row fingerprint query per request, and what the views derive from it (a few
entries, dropped with the history when a version is made).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from aggregator.store import Store
from aggregator.version_record import VersionRecord
from aggregator.web import readmodel

T = TypeVar("T")
MEMO_ENTRIES = 16  # derived views kept per history (a view per query string, at most)


def fingerprint(store: Store) -> tuple[Any, ...]:
    """What changes whenever a version is added, removed or rewritten."""
    return tuple(store.db.execute(
        "SELECT COUNT(*), MAX(version), SUM(created_at), MIN(sha256), MAX(sha256) "
        "FROM models").fetchone())


class HistoryCache:
    """One app's parsed history; shared by the web server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._records: list[VersionRecord] = []
        self._memo: OrderedDict[Hashable, Any] = OrderedDict()
        self.parses = 0  # how often the history was read in full: for tests

    def records(self, store: Store) -> list[VersionRecord]:
        """Every version's record (readmodel.version_records), oldest first. Callers
        must not change what they get: it is shared."""
        return self._current(store)[1]

    def derived(self, store: Store, name: Hashable,
                compute: Callable[[list[VersionRecord]], T]) -> T:
        """compute(records), kept under `name` until the history changes."""
        key, records = self._current(store)
        with self._lock:
            if key == self._key and name in self._memo:
                self._memo.move_to_end(name)
                return self._memo[name]
        value = compute(records)
        with self._lock:
            if key == self._key:
                self._memo[name] = value
                while len(self._memo) > MEMO_ENTRIES:
                    self._memo.popitem(last=False)
        return value

    def _current(self, store: Store) -> tuple[tuple[Any, ...], list[VersionRecord]]:
        key = fingerprint(store)
        with self._lock:
            if key == self._key:
                return key, self._records
        records = readmodel.version_records(store)  # outside the lock: the slow part
        with self._lock:
            self._key, self._records, self._memo = key, records, OrderedDict()
            self.parses += 1
        return key, records
