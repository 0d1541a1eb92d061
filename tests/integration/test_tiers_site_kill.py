"""A site gateway (`fedge aggregator serve` with [upper]) killed with SIGKILL mid-round,
twice (each time with an acked device update pending in its round), and restarted: the top
tier waits for it as for a late device, every update its devices got an ack for is in its
store and aggregated, and it rejoins and ends on the top's last model."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, DownlinkConfig, SyncConfig
from aggregator.service import Aggregator
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.training import mlp_trainer
from fedge.federation import PartyThread
from fedge.fleet import SlowTrainer
from tests.integration.fleet import Digits, wait_until
from tests.integration.tiers import TOP, bridged_brokers, stored_model

pytestmark = pytest.mark.integration
ROUNDS = 4
PER_SITE = 2
KILLED = "site-a"


def _site_toml(path: Path, name: str, port: int, sizes: list[int]) -> Path:
    path.write_text(
        f'federation = "{name}"\nport = {port}\nrounds = 0\n'
        f'db_path = "{path.with_suffix(".sqlite3")}"\n'
        f'presence_settle_s = 0.2\n[model]\nsizes = {sizes}\n[train]\nepochs = 1\n'
        f'[sync]\ntarget_updates = {PER_SITE}\nround_timeout_s = 60\n[downlink]\ndelta = false\n'
        f'[upper]\nenabled = true\nport = {port}\nfederation = "{TOP}"\nsite_id = "{name}"\n'
        f'ack_timeout_s = 2.0\n')
    return path


def _serve(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "aggregator", "serve",
                             "--exit-when-done", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_site_gateway_killed_mid_round_rejoins_and_loses_nothing_acked(tmp_path):
    data = Digits(devices=2 * PER_SITE)
    sites = [KILLED, "site-b"]
    with ExitStack() as stack:
        top_broker, brokers = bridged_brokers(stack, tmp_path, sites)
        top = Aggregator(AggregatorConfig(
            federation=TOP, db_path=tmp_path / "top.sqlite3", rounds=ROUNDS,
            port=top_broker.port, presence_settle_s=0.2,
            sync=SyncConfig(target_updates=2, round_timeout_s=90),
            downlink=DownlinkConfig(delta=False)), data.initial_weights(),
            {"kind": "mlp", "sizes": data.sizes})
        parties = [PartyThread(top.run, "top")]
        configs = {s: _site_toml(tmp_path / f"{s}.toml", s, brokers[s].port, data.sizes)
                   for s in sites}
        gateways = {s: _serve(configs[s]) for s in sites}
        devices = []
        for s, name in enumerate(sites):
            for d in range(PER_SITE):
                i = s * PER_SITE + d
                config = ClientConfig(device_id=f"{name}-d{d}", federation=name,
                                      port=brokers[name].port, ack_timeout_s=1.0,
                                      state_dir=tmp_path / f"{name}-d{d}",
                                      eligibility=EligibilityConfig(enabled=False))
                trainer = mlp_trainer(data.sizes, seed=i)
                if name == KILLED and d == 1:  # the round stays open while it trains
                    trainer = SlowTrainer(trainer, speed=0.1)
                devices.append(EdgeClient(config, trainer, *data.shards[i]))
        parties += [PartyThread(c.run, c.config.device_id) for c in devices]
        try:
            wait_until(lambda: top.version >= 1, 120, "the top tier's first version")
            for _ in range(2):  # mid-round: one acked update pending, the slow one training
                start = top.version
                wait_until(lambda start=start: top.version > start, 120, "the next version")
                wait_until(lambda: _pending(tmp_path / f"{KILLED}.sqlite3") > 0, 60,
                           "an acked update pending at the killed site")
                gateways[KILLED].kill()  # SIGKILL, by PID: no clean-up of any kind
                gateways[KILLED].wait(10)
                gateways[KILLED] = _serve(configs[KILLED])
            for gateway in gateways.values():
                assert gateway.wait(180) == 0
            parties[0].join(60)
            for party in parties[1:]:
                party.join(60)
        finally:
            for gateway in gateways.values():
                if gateway.poll() is None:
                    gateway.kill()
                    gateway.wait(10)
            for party in parties:
                party.stop.set()
                party.wait(10)
    assert top.version == ROUNDS
    with sqlite3.connect(tmp_path / "top.sqlite3") as conn:
        senders = {d for (d,) in conn.execute(
            "SELECT device_id FROM updates WHERE state='aggregated'")}
    assert senders == set(sites)
    for name in sites:
        with sqlite3.connect(tmp_path / f"{name}.sqlite3") as conn:
            stored = {n for (n,) in conn.execute("SELECT nonce FROM updates")}
        acked = {nonce for c in devices if c.config.federation == name
                 for nonce, status in c.stats.acked
                 if status in ("accepted", "late", "duplicate")}
        assert acked and acked <= stored, name  # nothing a device got an ack for is lost
        assert _pending(tmp_path / f"{name}.sqlite3") == 0, name  # and all of it was used
        last = stored_model(tmp_path / f"{name}.sqlite3", _latest(tmp_path / f"{name}.sqlite3"))
        final = stored_model(tmp_path / "top.sqlite3", ROUNDS)
        for tensor in final:
            np.testing.assert_array_equal(last[tensor], final[tensor])


def _pending(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM updates WHERE state='pending'"
                                    ).fetchone()[0])
    except sqlite3.Error:  # not made yet, or busy
        return 0


def _latest(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT MAX(version) FROM models").fetchone()[0])
