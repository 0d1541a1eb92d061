"""Differential privacy in whole federations through a real mosquitto.

Central DP: epsilon per version in the store and the REST API, equal to dp-accounting's
own figure, growing, and training stopped by the budget with fewer versions than
`rounds`; a restarted aggregator resumes the count and stops again at once.

Distributed DP: devices clip and noise their own updates as the task asks; the sum is a
plain one over unmasked updates until secure aggregation supplies the masked sum. A
device that ignores the task's DP settings is refused and, refused three times, flagged.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from aggregator.config import SyncConfig
from aggregator.privacy import PrivacyConfig
from aggregator.service import now
from aggregator.web import create_app
from edge_client.shared.protocol import Update, decode
from edge_client.shared.protocol.tensors import flatten_sorted
from tests.integration.fleet import Digits, make_aggregator, make_client, start_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits3() -> Digits:
    return Digits(devices=3)


def _epsilon(q: float, z: float, versions: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), versions))
    return accountant.get_epsilon(delta)


def test_central_dp_reports_epsilon_per_version_and_stops_at_the_budget(mosquitto, tmp_path,
                                                                      digits3):
    # Three devices, all invited every round: q = 3 / 3. The budget lies between the
    # epsilon of 3 and of 4 versions, so the fourth task is never opened.
    budget = (_epsilon(1.0, 1.5, 3, 1e-5) + _epsilon(1.0, 1.5, 4, 1e-5)) / 2
    privacy = PrivacyConfig(mode="central", clip=2.0, noise_multiplier=1.5,
                            target_epsilon=budget, seed=7)
    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=10, privacy=privacy)
    with pytest.raises(ValueError, match="fedavg and the server optimizers only"):
        agg.set_strategy("median")  # the dashboard cannot switch DP off by the back door
    clients = [make_client(mosquitto, tmp_path, digits3, i) for i in range(3)]
    for run in start_all(agg, clients):
        run.join(90)
    assert agg.version == 3 < agg.config.rounds
    assert agg.finished and "privacy budget" in agg.snapshot.stopped
    history = [h for h in agg.history if h.version > 0]
    epsilons = [h.epsilon for h in history]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    for n, value in enumerate(epsilons, start=1):
        assert value == pytest.approx(_epsilon(1.0, 1.5, n, 1e-5), rel=1e-9)
    assert epsilons[-1] <= budget
    assert all(h.metric("dp_sampling_rate") == 1.0
               and h.metric("dp_noise_std") == pytest.approx(1.5 * 2 / 3) for h in history)
    for c in clients:  # devices got the done task and the last model
        assert c.model_version == 3 and c.stats.acks["accepted"] == 3

    api = create_app(agg.config.db_path, None, None).test_client()
    versions = api.get("/api/versions").get_json()["versions"]
    assert [v.get("epsilon") for v in versions[1:]] == pytest.approx(epsilons)
    overview = api.get("/api/overview").get_json()
    assert "privacy budget" in overview["stopped"]
    assert overview["privacy"]["epsilon"] == pytest.approx(epsilons[-1])
    assert overview["privacy"]["target_epsilon"] == pytest.approx(budget)

    # A restart recomputes the spent budget from the store, and the first task it plans
    # (once the devices are back) is refused the same way.
    again = make_aggregator(mosquitto, tmp_path, digits3, rounds=10, privacy=privacy)
    assert again.privacy.accountant.epsilon() == pytest.approx(epsilons[-1])
    again.available = {"dev-0", "dev-1", "dev-2"}
    again.core.open_task(now())  # the core directly: no loop runs
    state = again.core.state
    assert state.task is None and state.finished and "privacy budget" in state.stopped
    again.store.close()


def _stored_updates(db_path) -> list[tuple[str, str, bytes]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute("SELECT device_id, state, payload FROM updates"))


def test_distributed_dp_devices_clip_and_noise_and_an_old_device_is_refused(
        mosquitto, tmp_path, digits3, caplog):
    privacy = PrivacyConfig(mode="distributed", clip=0.5, noise_multiplier=1.0)
    sync = SyncConfig(target_updates=2, over_selection=0.5, round_timeout_s=30)
    # 6 rounds: dev-2 needs 3 refusals to be flagged, even if it misses a task or two by
    # still training the previous one when a round opens and closes (a loaded machine)
    agg = make_aggregator(mosquitto, tmp_path, digits3, rounds=6, privacy=privacy, sync=sync)
    clients = [make_client(mosquitto, tmp_path, digits3, i) for i in range(3)]
    # dev-2 runs an SDK that ignores Task.dp: it sends its raw update.
    clients[2].session.maker.add_dp_noise = lambda update, dp: update  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="aggregator.anomalies")
    for run in start_all(agg, clients):
        run.join(90)
    assert agg.version == 6
    rows = _stored_updates(agg.config.db_path)
    assert rows and {r[0] for r in rows} == {"dev-0", "dev-1"}  # dev-2 never stored
    noise_std = 1.0 * 0.5 / np.sqrt(2)  # z C / sqrt(m), m = target_updates = 2
    values = []
    for _, _, payload in rows:
        update = decode(payload, expect=Update)
        assert update.metrics["dp_clip"] == 0.5
        assert update.metrics["dp_noise_std"] == pytest.approx(noise_std)
        values.append(flatten_sorted(update.tensors))
    # A clipped update has norm <= 0.5 over 1,210 values; what one sees of it is the noise,
    # std noise_std per value (measured over all stored values, ~10k: 0.7% standard error).
    assert np.concatenate(values).std() == pytest.approx(noise_std, rel=0.05)
    assert clients[2].stats.acks["rejected"] >= 3 and clients[2].stats.acks["accepted"] == 0
    history = [h for h in agg.history if h.version > 0]
    assert all(h.metric("dp_mode") == "distributed" and h.updates == 2 for h in history)
    assert all(h.metric("dp_noise_multiplier") == pytest.approx(1.0) for h in history)  # k = m
    flagged = [r.getMessage() for r in caplog.records if "dev-2 flagged" in r.getMessage()]
    assert len(flagged) == 1 and "does not carry it" in flagged[0]
    api = create_app(agg.config.db_path, None, None).test_client()
    rows = {r["device_id"]: r for r in api.get("/api/anomalies").get_json()["devices"]}
    assert rows["dev-2"]["flagged"] and not rows["dev-0"]["flagged"]
    assert dataclasses.asdict(agg.config.privacy)["mode"] == "distributed"
