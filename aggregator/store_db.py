"""The store's connection: the one place that knows which database engine holds the store.

The store's SQL is written once, in SQLite's spelling (`?` placeholders, `:name`
parameters, `ON CONFLICT ... DO UPDATE` upserts). `StoreDB` is what the store's parts
use: `execute` and friends, transactions, and the group commit's two durability levels.
`SqliteDB` (here) is the embedded default; `PostgresDB` (aggregator/store_postgres.py,
imported only when `db_url` names PostgreSQL) translates the SQL and the schema.

A location is a `Path` (an SQLite file) or a `postgresql://` URL (str).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

StoreLocation = Path | str  # an SQLite file, or a postgresql:// URL
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: StoreLocation) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def describe(location: StoreLocation) -> str:
    """The location for logs and messages: a URL without its password."""
    if "://" not in str(location):
        return str(location)
    try:
        parts = urlsplit(str(location))
        parts.port  # noqa: B018 (parsed here: a bad port raises ValueError)
    except ValueError:
        return str(location).split("://", 1)[0] + "://<not a valid URL>"
    if parts.password is None:
        return str(location)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


class StoreUnreachable(OSError):
    """The database server went away mid-run (PostgreSQL): like a failing disk for SQLite,
    the service stops (a batch being committed is GroupLost, its acks unsent), with one
    line naming db_url."""


class Rows(Protocol):
    """What `execute` returns: a DB-API cursor, as far as the store uses one."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class StoreDB(Protocol):
    """A connection to the store, whichever engine holds it."""

    engine: str  # "sqlite" or "postgresql": for messages that name what is engine-only
    errors: tuple[type[Exception], ...]  # what the engine raises when a statement fails

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Rows: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Rows: ...
    def executescript(self, script: str) -> None: ...
    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]: ...

    @property
    def in_transaction(self) -> bool: ...
    @property
    def total_changes(self) -> int: ...

    def begin(self) -> None: ...
    def has_table(self, name: str) -> bool: ...
    def claim_writer(self) -> bool: ...
    def soft_transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def begin_group(self) -> None: ...
    def commit_group(self, durable: bool) -> None: ...
    def end_group(self) -> None: ...
    def close(self) -> None: ...


class SqliteDB:
    """The embedded store: one SQLite file in WAL mode, synchronous=FULL.

    A group commit runs at synchronous=NORMAL (SQLite fixes the sync level before a
    transaction begins) and fsyncs the WAL itself when the group holds a write that
    acknowledges something: in WAL mode that is what synchronous=FULL does at each commit.
    """

    engine = "sqlite"
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._wal_fd: int | None = None  # the WAL, kept open to fsync it
        if read_only:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self.raw = sqlite3.connect(uri, uri=True, timeout=10.0,
                                       check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.raw.execute("PRAGMA journal_mode=WAL")
        self.raw.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Rows:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Rows:
        return self.raw.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self.raw.executescript(script)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """Rows one at a time (SQLite's cursor steps through them as they are read)."""
        yield from self.raw.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    @property
    def total_changes(self) -> int:
        return self.raw.total_changes

    def begin(self) -> None:
        self.raw.execute("BEGIN IMMEDIATE")

    def claim_writer(self) -> bool:
        """For SQLite the seal file's lock says who serves the store (store_seal.py)."""
        return True

    def has_table(self, name: str) -> bool:
        return self.raw.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                (name,)).fetchone() is not None

    @contextlib.contextmanager
    def soft_transaction(self) -> Iterator[None]:
        """A transaction without the fsync: the next synchronous commit makes it durable."""
        prior = self.raw.execute("PRAGMA synchronous").fetchone()[0]
        self.raw.execute("PRAGMA synchronous=NORMAL")
        try:
            self.begin()
            try:
                yield
            except BaseException:
                if self.raw.in_transaction:
                    self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")
        finally:
            self.raw.execute(f"PRAGMA synchronous={int(prior)}")

    def begin_group(self) -> None:
        self.raw.execute("PRAGMA synchronous=NORMAL")
        self.begin()

    def commit_group(self, durable: bool) -> None:
        self.raw.execute("COMMIT")
        if durable:
            self._sync_wal()

    def end_group(self) -> None:
        self.raw.execute("PRAGMA synchronous=FULL")

    def _sync_wal(self) -> None:
        """fsync the WAL: what a synchronous=FULL commit does, after a NORMAL one."""
        if self._wal_fd is None:
            self._wal_fd = os.open(str(self.path) + "-wal", os.O_RDONLY)
        os.fsync(self._wal_fd)

    def close(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self.raw.close()


def store_errors(location: StoreLocation) -> tuple[type[Exception], ...]:
    """What a failed statement raises on this store's engine (psycopg's, for PostgreSQL)."""
    if is_postgres(location):
        try:
            import psycopg  # the `postgres` extra
        except ImportError:
            return ()
        return (psycopg.Error,)
    return (sqlite3.Error,)


def unavailable_errors(location: StoreLocation) -> tuple[type[Exception], ...]:
    """What the engine raises when the store is busy, gone or unreachable: worth a retry."""
    if is_postgres(location):
        try:
            import psycopg
        except ImportError:
            return ()
        return (psycopg.OperationalError, StoreUnreachable)
    return (sqlite3.OperationalError,)


def connect(location: StoreLocation, read_only: bool = False) -> StoreDB:
    """Open the store at `location`; psycopg is imported only for a PostgreSQL URL.
    ValueError (one line, naming db_url) when PostgreSQL cannot be reached."""
    if is_postgres(location):
        from aggregator.store_postgres import PostgresDB  # lazy: psycopg only for PostgreSQL
        return PostgresDB(str(location))
    return SqliteDB(Path(location), read_only=read_only)
