"""Group commit: many messages' writes in one SQLite transaction, one fsync (Store.group).

The service handles a batch of received messages inside `group()` and sends the batch's
acks only after it returns (aggregator/ingest_batch.py). Updates, rejections, statuses
and counters of the batch commit together; the store's seal follows the commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from aggregator.store_base import GroupState, Tables

__all__ = ["GroupCommits", "GroupLost"]


class GroupLost(OSError):
    """A group commit failed or SQLite rolled it back by itself: nothing of the batch
    was stored, and none of its acks may be sent."""


class GroupCommits(Tables):
    """The group commit of `Store`; the seal (`_reseal`) is the store's."""

    path: Path
    commits: int
    _wal_fd: int | None = None  # the WAL, kept open to fsync it

    def _reseal(self, updates: int = 0, version: int | None = None,
                sha256: str = "") -> None:
        raise NotImplementedError  # Store's

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction for a batch of messages: every write inside (updates,
        rejections, statuses, counters) commits together, with one fsync of the WAL, or
        with none when the batch holds only writes that acknowledge nothing
        (`_soft_writes`). SQLite fixes the sync level before a transaction begins, so the
        group commits at synchronous=NORMAL (no fsync) and fsyncs the WAL itself when it
        holds more: in WAL mode that is what synchronous=FULL does at each commit. The
        seal follows once that returned, so it never says more than the store holds.
        The caller sends the batch's acks only after this block exits without error.

        Raises GroupLost when the commit failed or SQLite gave up the transaction (disk
        full, I/O error): the batch's writes are gone, and its acks must not be sent."""
        if self._group is not None or self.db.in_transaction:
            raise RuntimeError("Store.group: a transaction is open already")
        self.db.execute("PRAGMA synchronous=NORMAL")
        durable = False
        try:
            self.db.execute("BEGIN IMMEDIATE")
            group = self._group = GroupState(self.db.total_changes)
            try:
                yield
                if not self.db.in_transaction:
                    raise GroupLost("the store rolled back a batch (disk full or an I/O "
                                    "error?)")
                durable = self.group_durable()
                try:
                    self.db.execute("COMMIT")
                    if durable:
                        self._sync_wal()
                except (sqlite3.Error, OSError) as exc:
                    raise GroupLost(f"the store could not commit a batch: {exc}") from exc
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                self._group = None
        finally:
            self.db.execute("PRAGMA synchronous=FULL")
        self.commits += durable
        if group.updates or group.version is not None:
            version, sha256 = group.version or (None, "")
            self._reseal(group.updates, version, sha256)

    def _sync_wal(self) -> None:
        """fsync the WAL: what a synchronous=FULL commit does, after a NORMAL one."""
        if self._wal_fd is None:
            self._wal_fd = os.open(str(self.path) + "-wal", os.O_RDONLY)
        os.fsync(self._wal_fd)

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

    def _close_wal(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
