"""The admin API acting on a running aggregator: pause, resume, choose the strategy."""

from __future__ import annotations

import time

import pytest

from aggregator.web import create_app
from tests.integration.fleet import Digits, Running, make_aggregator, make_client, wait_until

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer admin-secret"}


def test_pause_resume_and_strategy_through_the_api(mosquitto, tmp_path):
    data = Digits(devices=1)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=0)
    device = make_client(mosquitto, tmp_path, data, 0, exit_when_done=False)
    api = create_app(agg.config.db_path, None, "admin-secret", actions=agg).test_client()
    runs = [Running(agg.run, "aggregator"), Running(device.run, "device")]
    try:
        wait_until(lambda: agg.version >= 2, 20, "a couple of versions")
        reply = api.post("/api/admin/training", json={"running": False}, headers=ADMIN)
        assert reply.status_code == 202, reply.get_json()  # queued onto the loop
        wait_until(lambda: agg.paused, 5, "the pause to reach the loop")
        paused_at = agg.version
        time.sleep(1.0)
        assert agg.version <= paused_at + 1  # at most the version already under way

        assert api.post("/api/admin/strategy", json={"name": "krum-42"},
                        headers=ADMIN).status_code == 400
        assert api.post("/api/admin/strategy", json={"name": "fedavg"},
                        headers=ADMIN).status_code == 202
        assert api.post("/api/admin/training", json={"running": True},
                        headers=ADMIN).status_code == 202
        wait_until(lambda: agg.version >= paused_at + 3, 20, "training to resume")
    finally:
        for run in runs:
            run.halt()
