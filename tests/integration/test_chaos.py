"""The aggregator killed with SIGKILL ten times during a federation over real mosquitto:
every update a device got an ack for is in the store, and the federation finishes; with
its store in SQLite and in a real PostgreSQL (`store_url`, tests/conftest.py)."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from aggregator.store import Store
from tests.integration.fleet import FEDERATION, Digits, Running, make_client

pytestmark = pytest.mark.integration
ROUNDS = 12
KILLS = 10


def _serve(config) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "aggregator", "serve",
                             "--exit-when-done", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_ten_sigkills_lose_no_acked_update_and_the_federation_finishes(mosquitto, tmp_path,
                                                                       store_url):
    data = Digits(devices=3)
    where = (f'db_url = "{store_url}"' if isinstance(store_url, str)
             else f'db_path = "{store_url}"')
    config = tmp_path / "aggregator.toml"
    config.write_text(
        f'federation = "{FEDERATION}"\nport = {mosquitto.port}\nrounds = {ROUNDS}\n'
        f'{where}\npresence_settle_s = 0.2\n[model]\nsizes = {data.sizes}\n'
        f'[train]\nepochs = 1\n[sync]\ntarget_updates = 3\nround_timeout_s = 30\n')
    clients = [make_client(mosquitto, tmp_path, data, i, ack_timeout_s=1.0)
               for i in range(3)]
    devices = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    schedule = random.Random(7)
    aggregator = _serve(config)
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(schedule.uniform(0.2, 1.2))  # a random point in its life
            if aggregator.poll() is not None:
                break  # it finished before we could kill it again
            aggregator.kill()  # SIGKILL: no clean-up of any kind
            aggregator.wait(10)
            kills += 1
            aggregator = _serve(config)
        assert aggregator.wait(120) == 0
        for run in devices:
            run.join(60)
    finally:
        if aggregator.poll() is None:
            aggregator.kill()
            aggregator.wait(10)
    assert kills == KILLS
    store = Store(store_url)
    try:
        stored = {nonce: state for _, _, nonce, state in store.update_keys()}
        versions = [h.version for h in store.model_history()]
    finally:
        store.close()
    acked = {nonce for c in clients for nonce, status in c.stats.acked
             if status in ("accepted", "late", "duplicate")}
    assert acked and acked <= stored.keys()  # every acked update is accounted for
    assert versions == list(range(ROUNDS + 1))  # and the federation finished
    assert all(c.model_version == ROUNDS for c in clients)
