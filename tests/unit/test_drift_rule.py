"""The aggregator's drift rule and retraining campaigns, sans-IO: statuses with drift
scores in, a campaign (logged, stored, extending the plan) out; the config keys and the
stored history (issue 18, "Drift")."""

from __future__ import annotations

import logging

import pytest

from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.core import StatusMessage
from aggregator.drift import CAMPAIGNS_NOTE, DriftConfig, DriftWatch, campaigns
from aggregator.status import FINISHED_NOTE
from aggregator.store import Store
from aggregator.store_drift import KEEP_PER_DEVICE, drift_history
from edge_client.shared.protocol import Status, encode
from edge_client.shared.protocol.drift import DriftReport
from edge_client.shared.settings import ConfigError
from tests.unit.test_aggregator_core import TOPICS, Harness, tasks, update

CALM = DriftReport(psi_max=0.05, psi_mean=0.01, feature=0, seen=300)
SHIFTED = DriftReport(psi_max=2.0, psi_mean=0.4, feature=9, seen=300)


def _status(device: str, drift: DriftReport | None, online: bool = True) -> Status:
    return Status(device_id=device, online=online, model_version=0, drift=drift)


# ------------------------------------------------------------------ the rule alone
def test_the_rule_is_off_unless_configured(tmp_path):
    watch = DriftWatch(DriftConfig(), Store(tmp_path / "s.sqlite3"))
    assert watch.on_status(_status("a", SHIFTED), 1.0, 0, 10, None) is None
    assert watch.drifting() == {}  # nothing counts as drift without a rule


def test_enough_drifting_devices_open_one_campaign_that_extends_the_plan(tmp_path, caplog):
    store = Store(tmp_path / "s.sqlite3")
    watch = DriftWatch(DriftConfig(psi_threshold=0.25, min_devices=2, campaign_rounds=3),
                       store)
    caplog.set_level(logging.INFO, "aggregator.service")
    assert watch.on_status(_status("a", SHIFTED), 1.0, 4, 10, None) is None  # one is not enough
    assert "a drifts: PSI max 2 > 0.25; 1 device(s) drift now (a campaign needs 2)" \
        in caplog.text
    assert watch.on_status(_status("b", CALM), 2.0, 4, 10, None) is None
    campaign = watch.on_status(_status("c", SHIFTED), 3.0, 4, 10, None)
    assert campaign is not None and campaign.devices == ("a", "c")
    assert campaign.at_version == 4 and campaign.until_version == 13
    assert "PSI max 2 > 0.25" in campaign.reason and "2 of 3 device(s)" in campaign.reason
    assert "retraining campaign 1 opened at version 4" in caplog.text
    assert watch.on_status(_status("d", SHIFTED), 4.0, 5, 13, None) is None  # one at a time
    assert [c.number for c in campaigns(store)] == [1]
    # d drifted while campaign 1 retrained: once it ends, d opens no second one
    assert watch.on_status(_status("d", SHIFTED), 5.0, 13, 13, None) is None


def test_a_device_opens_at_most_one_campaign_per_episode_of_drift(tmp_path):
    watch = DriftWatch(DriftConfig(psi_threshold=0.25), Store(tmp_path / "s.sqlite3"))
    assert watch.on_status(_status("a", SHIFTED), 1.0, 10, 10, None).until_version == 13
    assert watch.on_status(_status("a", SHIFTED), 2.0, 13, 13, None) is None  # still drifting
    watch.on_status(_status("a", CALM), 3.0, 13, 13, None)  # back under the rule
    again = watch.on_status(_status("a", SHIFTED), 4.0, 13, 13, None)
    assert again is not None and again.number == 2 and again.until_version == 16


def test_a_fraction_and_offline_devices(tmp_path):
    watch = DriftWatch(DriftConfig(psi_threshold=0.25, min_fraction=0.5),
                       Store(tmp_path / "s.sqlite3"))
    for device in "abc":
        watch.on_status(_status(device, CALM), 1.0, 0, 0, None)
    assert watch.on_status(_status("d", SHIFTED), 1.0, 0, 0, None) is None  # 1 of 4
    watch.on_status(_status("a", None, online=False), 1.0, 0, 0, None)  # gone: not counted
    watch.on_status(_status("b", None, online=False), 1.0, 0, 0, None)
    campaign = watch.on_status(_status("e", SHIFTED), 1.0, 0, 0, None)  # 2 of 3 online
    assert campaign is not None and campaign.until_version is None  # rounds = 0: no end


def test_accuracy_on_labels_counts_once_enough_labels_came(tmp_path):
    config = DriftConfig(accuracy_floor=0.8, min_labelled=20)
    assert config.why_drifting(DriftReport(accuracy=0.5, labelled=10)) is None
    assert config.why_drifting(DriftReport(accuracy=0.5, labelled=20)) == "accuracy 0.500 < 0.8"
    assert config.why_drifting(DriftReport(accuracy=0.9, labelled=20)) is None
    mean = DriftConfig(psi_threshold=0.25, statistic="mean")
    assert mean.why_drifting(SHIFTED) == "PSI mean 0.4 > 0.25"
    assert mean.why_drifting(DriftReport(psi_max=5.0, psi_mean=0.1, seen=9)) is None


def test_stopped_training_opens_no_campaign_and_says_why(tmp_path, caplog):
    watch = DriftWatch(DriftConfig(psi_threshold=0.25), Store(tmp_path / "s.sqlite3"))
    caplog.set_level(logging.INFO, "aggregator.service")
    assert watch.on_status(_status("a", SHIFTED), 1.0, 3, 10, "privacy budget spent") is None
    assert "no retraining campaign although" in caplog.text
    assert "privacy budget spent" in caplog.text


@pytest.mark.parametrize("table, match", [
    ({"psi_threshold": 0}, "psi_threshold must be a number > 0"),
    ({"statistic": "median"}, "statistic must be 'max' or 'mean'"),
    ({"accuracy_floor": 1.5}, "accuracy_floor must be in"),
    ({"min_devices": 0}, "must be >= 1"),
    ({"min_fraction": 2}, "min_fraction must be from 0 to 1"),
    ({"campaign_rounds": 0}, "must be >= 1"),
    ({"threshold": 0.2}, "unknown key 'threshold'"),
])
def test_bad_drift_keys_are_refused_naming_the_key(table, match):
    with pytest.raises(ConfigError, match=match):
        load_aggregator_config({"drift": table})


def test_the_drift_table_reads_from_toml():
    config = load_aggregator_config({"drift": {"psi_threshold": 0.3, "min_devices": 2}})
    assert config.drift.enabled and config.drift.psi_threshold == 0.3
    assert not AggregatorConfig().drift.enabled


# ------------------------------------------------------------------ through the core
def _say(h: Harness, device: str, drift: DriftReport | None) -> None:
    status = Status(device_id=device, online=True, model_version=h.core.state.version,
                    time=h.clock.wall, drift=drift)
    h.send(StatusMessage(TOPICS.status(device), encode(status), True, h.clock.at()))


def test_a_finished_federation_trains_again_for_a_campaign_and_a_restart_keeps_it(tmp_path):
    h = Harness(tmp_path, rounds=1, drift=DriftConfig(psi_threshold=0.25, campaign_rounds=2))
    task = h.connect(["dev-0", "dev-1"])
    for device in task.expected():
        h.upload(update(device, task))
    h.tick(1.0)
    [done] = tasks(h.tick(0.1))
    assert done.done and h.store.note(FINISHED_NOTE)
    _say(h, "dev-0", SHIFTED)
    assert h.core.state.rounds == 3 and not h.core.state.finished
    assert not h.store.note(FINISHED_NOTE)
    [again] = tasks(h.tick(1.0))
    assert not again.done and again.round == 2 and again.model_version == 1
    h.core.write_soft_state()
    history = drift_history(h.store.db)
    assert history["dev-0"][-1]["psi_max"] == 2.0
    h.store.close()
    restarted = Harness(tmp_path, rounds=1,
                        drift=DriftConfig(psi_threshold=0.25, campaign_rounds=2))
    assert restarted.core.state.rounds == 3  # the campaign's versions are still planned
    [stored] = restarted.store.note(CAMPAIGNS_NOTE)
    assert stored["devices"] == ["dev-0"] and stored["until_version"] == 3


def test_drift_history_is_bounded_per_device_and_forgotten_with_it(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    store.set_devices([(_status("a", CALM), float(i)) for i in range(KEEP_PER_DEVICE + 5)])
    store.set_devices([(_status("b", SHIFTED), 1.0), (_status("b", None), 2.0)])
    history = drift_history(store.db)
    assert len(history["a"]) == KEEP_PER_DEVICE and history["a"][0]["at"] == 5.0
    assert [r["psi_max"] for r in history["b"]] == [2.0]
    store.forget_device("a")
    assert "a" not in drift_history(store.db)


def test_only_devices_with_a_track_record_count(tmp_path):
    """Anyone may publish a status under any id in plain mode: a device counts for the
    rule once an update of it was stored, so made-up devices open no campaign."""
    h = Harness(tmp_path, rounds=5, drift=DriftConfig(psi_threshold=0.25))
    h.connect(["dev-0", "dev-1"])
    for device in ("fake-1", "fake-2", "dev-0"):  # dev-0 sent no update yet either
        _say(h, device, SHIFTED)
    assert h.core.state.rounds == 5 and campaigns(h.store) == []
