"""Shared fixtures: real MQTT brokers on 127.0.0.1, one per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.blas_threads import limit_blas_threads
from fedge.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto


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
