"""Shared fixtures: real MQTT brokers on 127.0.0.1, one per test; a real PostgreSQL
server for the session, with a new database per test (tests/pg_server.py)."""

from __future__ import annotations

import importlib.util
import os
import pwd
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aggregator.store import Store
from edge_client.blas_threads import limit_blas_threads
from fedge.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto
from tests.pg_server import PostgresServer, find_postgres_bin

STORE_BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    """In-process fleets train like `fedge` runs them: one BLAS thread (blas_threads.py)."""
    limit_blas_threads(1)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto; fails (never skips) when missing, because CI installs it."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    broker = MosquittoBroker.start(workdir=tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """amqtt in a background thread, the fallback used by `fedge demo` without mosquitto."""
    broker = EmbeddedBroker.start()
    yield broker
    broker.stop()


def _postgres_missing() -> str | None:
    """Why a real PostgreSQL cannot run here, or None."""
    if find_postgres_bin() is None:
        return ("PostgreSQL not found in /usr/lib/postgresql/*/bin: apt-get install "
                "postgresql (scripts/setup.sh does)")
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg not installed: pip install 'fedge[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session, on a free loopback port; stopped by PID."""
    why = _postgres_missing()
    if why is not None:
        pytest.skip(why)
    bindir = find_postgres_bin()
    assert bindir is not None
    server = PostgresServer.start(bindir)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for this test alone."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's store lives, once per backend: an SQLite file, or a PostgreSQL
    database of its own."""
    if request.param == "sqlite":
        return tmp_path / "agg.sqlite3"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def make_store(store_url: Path | str) -> Iterator[Callable[[], Store]]:
    """Open the test's store (as often as asked: a restart opens it again); all closed
    at the end."""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(Store(store_url))
        return opened[-1]
    yield make
    for store in opened:
        store.close()
