"""Group commit: many messages' writes in one transaction, one flush (Store.group).

The service handles a batch of received messages inside `group()` and sends the batch's
acks only after it returns (aggregator/ingest_batch.py). Updates, rejections, statuses
and counters of the batch commit together; the store's seal follows the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aggregator.store_base import GroupState, Tables

__all__ = ["GroupCommits", "GroupLost"]


class GroupLost(OSError):
    """A group commit failed or SQLite rolled it back by itself: nothing of the batch
    was stored, and none of its acks may be sent."""


class GroupCommits(Tables):
    """The group commit of `Store`; the seal (`_reseal`) is the store's."""

    commits: int

    def _reseal(self, updates: int = 0, version: int | None = None,
                sha256: str = "") -> None:
        raise NotImplementedError  # Store's

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction for a batch of messages: every write inside (updates,
        rejections, statuses, counters) commits together, with one fsync of the WAL, or
        with none when the batch holds only writes that acknowledge nothing
        (`_soft_writes`): how each engine does that is in aggregator/store_db.py (SQLite)
        and aggregator/store_postgres.py. The seal (SQLite only) follows once that
        returned, so it never says more than the store holds.
        The caller sends the batch's acks only after this block exits without error.

        Raises GroupLost when the commit failed or the engine gave up the transaction
        (disk full, I/O error, the PostgreSQL server lost): the batch's writes are gone,
        and its acks must not be sent."""
        if self._group is not None or self.db.in_transaction:
            raise RuntimeError("Store.group: a transaction is open already")
        durable = False
        try:
            self.db.begin_group()
            group = self._group = GroupState(self.db.total_changes)
            try:
                yield
                if not self.db.in_transaction:
                    raise GroupLost("the store rolled back a batch (disk full or an I/O "
                                    "error?)")
                durable = self.group_durable()
                try:
                    self.db.commit_group(durable)
                except (*self.db.errors, OSError) as exc:
                    raise GroupLost(f"the store could not commit a batch: {exc}") from exc
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._group = None
        finally:
            self.db.end_group()
        self.commits += durable
        if group.updates or group.version is not None:
            version, sha256 = group.version or (None, "")
            self._reseal(group.updates, version, sha256)

    def group_durable(self) -> bool:
        """Whether the open group holds a write that needs its fsync (an update, say)."""
        group = self._group
        return group is not None and \
            self.db.total_changes - group.changes_at_start > group.soft_changes

    def _seal_later(self, updates: int, version: int | None, sha256: str) -> bool:
        """Inside a group: keep what the seal must add, for after the COMMIT."""
        group = self._group
        if group is None:
            return False
        group.updates += updates
        if version is not None:
            group.version = (version, sha256)
        return True
