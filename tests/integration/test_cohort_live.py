"""Tasks that invite by cohort (docs/protocol.md, "Cohorts") through a real mosquitto:
a sync federation that draws part of the fleet each round, and an async one under
[async] concurrency."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from aggregator.config import AsyncConfig, SyncConfig
from edge_client.shared.protocol import Task, decode
from tests.integration.fleet import Digits, federate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits5() -> Digits:
    return Digits(devices=5)


def _tasks(db_path) -> list[tuple[Task, int]]:
    with sqlite3.connect(db_path) as db:
        rows = list(db.execute("SELECT message FROM tasks ORDER BY opened_at"))
    return [(decode(row[0], expect=Task), len(row[0])) for row in rows]


def test_a_sync_federation_draws_its_rounds_by_cohort(mosquitto, tmp_path, digits5, caplog):
    caplog.set_level(logging.INFO)
    agg, clients, _ = federate(mosquitto, tmp_path, digits5, rounds=3,
                               sync=SyncConfig(target_updates=2, round_timeout_s=30))
    assert agg.version == 3 and [h.updates for h in agg.history[1:]] == [2, 2, 2]
    rounds = [(t, size) for t, size in _tasks(agg.config.db_path) if not t.done]
    for task, size in rounds:  # what the broker retained: a seed and a cutoff, no fleet
        assert task.cohort is not None and task.cohort.size == 2 and size < 400
        # ids only to top a round up with proven devices: at most as many as it needs
        assert len(task.invited or ()) <= 2
        invited = [c.config.device_id for c in clients if task.invites(c.config.device_id)]
        assert len(invited) == task.invited_count() < 5
    sat_out = sum(c.stats.skipped["not invited"] for c in clients)
    assert sat_out >= 3  # someone sat out every round
    assert "not invited this time: not in its cohort (2 of 5 devices drawn)" in caplog.text


def test_an_async_federation_under_a_concurrency_bound(mosquitto, tmp_path, digits5, caplog):
    caplog.set_level(logging.INFO)
    agg, _, _ = federate(mosquitto, tmp_path, digits5, mode="async", rounds=4,
                               async_=AsyncConfig(buffer_size=2, concurrency=2,
                                                  max_staleness=4))
    assert agg.version == 4 and all(h.updates == 2 for h in agg.history[1:])
    with sqlite3.connect(agg.config.db_path) as db:  # nothing thrown away as stale
        assert db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0] == 0
    assert "available device(s) not invited for now" in caplog.text
    assert "of [async] concurrency = 2 are training" in caplog.text
    for task, _ in _tasks(agg.config.db_path):
        if not task.done:
            assert task.cohort is not None and task.invited is None
