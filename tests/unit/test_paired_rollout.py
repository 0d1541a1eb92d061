"""Staged rollout with the real sans-IO cores on both sides and no broker
(paired_harness.py): a bad candidate is rolled back unserved, even when the aggregator
crashes mid-canary and the canaries' reports in flight are lost, and in async mode too."""

from __future__ import annotations

from aggregator.config import AsyncConfig
from aggregator.lifecycle import RolloutConfig, Stage
from fedge.rollout_demo import corrupt_nth_candidate
from tests.unit.paired_harness import Federation

RULES = RolloutConfig(canary_fraction=0.5, min_canary_reports=2, margin=0.1,
                      canary_timeout_s=120)


def _federation(tmp_path, bad: int | None = None) -> Federation:
    fed = Federation(tmp_path, devices=4, rounds=2, rollout=RULES)
    if bad is not None:
        fed.aggregator.core.versions.tamper = corrupt_nth_candidate(bad)
    return fed


def test_good_candidates_are_promoted_and_every_device_serves_production_only(tmp_path):
    fed = _federation(tmp_path)
    fed.start()
    fed.run_to_end()
    store = fed.aggregator.store
    assert store.stages() == {0: Stage.RETIRED, 1: Stage.RETIRED, 2: Stage.PRODUCTION}
    for device in fed.devices:
        assert device.served == [0, 1, 2], (device.name, device.served)
    assert {len(store.canary_reports(v)) for v in (1, 2)} == {2}


def test_a_crash_mid_canary_loses_the_reports_in_flight_and_decides_the_same(tmp_path):
    fed = _federation(tmp_path, bad=2)
    fed.start()
    aggregator = fed.aggregator
    fed.run(lambda: aggregator.store.stage_of(2) is Stage.CANARY)
    assert aggregator.store.canary_reports(2) == []  # the canaries have not answered yet
    aggregator.crash()
    fed.step(1.0)  # what was sent to it meanwhile is gone (clean session)
    aggregator.start()
    aggregator.connect()
    fed.run_to_end()
    store = aggregator.store
    assert store.stage_of(2) is Stage.ROLLED_BACK and store.stage_of(3) is Stage.PRODUCTION
    assert store.model_history()[-1].metric("copy_of") == 1
    assert len(store.canary_reports(2)) == 2  # sent again when the Rollout came again
    for device in fed.devices:
        assert 2 not in device.served and device.served[-1] == 3, (device.name, device.served)


def test_async_rounds_roll_a_bad_candidate_back_unserved_too(tmp_path):
    fed = Federation(tmp_path, devices=4, rounds=3, rollout=RULES, mode="async",
                     async_=AsyncConfig(buffer_size=2, max_staleness=2))
    fed.aggregator.core.versions.tamper = corrupt_nth_candidate(2)
    fed.start()
    fed.run_to_end()
    store = fed.aggregator.store
    assert store.stages() == {0: Stage.RETIRED, 1: Stage.RETIRED, 2: Stage.ROLLED_BACK,
                              3: Stage.PRODUCTION}
    assert store.model_history()[-1].metric("copy_of") == 1
    assert len(store.canary_reports(2)) >= RULES.min_canary_reports
    for device in fed.devices:
        assert device.served == [0, 1, 3], (device.name, device.served)
    fed.assert_no_update_lost()
