"""Model stages, the promotion rule and canaries in the aggregator core, without a broker:
the core is fed what MQTT would deliver, with a scripted clock (as test_aggregator_core)."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3

import pytest

from aggregator.core import CanaryMessage, Publish
from aggregator.lifecycle import Command, RolloutConfig, Stage
from aggregator.lifecycle.rule import Verdict, decide, summarize
from aggregator.store import Store
from edge_client.shared.protocol import RemoteProtocolError
from edge_client.shared.protocol.rollout import (
    CanaryReport,
    Rollout,
    decode_report,
    decode_rollout,
    encode_report,
    encode_rollout,
    pick_canaries,
)
from tests.unit.test_aggregator_core import TOPICS, WEIGHTS, Harness, tasks, update

RULES = RolloutConfig(canary_fraction=0.5, min_canary_reports=2, margin=0.02,
                      canary_timeout_s=60)
DEVICES = ["dev-0", "dev-1", "dev-2", "dev-3"]


def report(device: str, cand: float, prod: float, samples: int = 10, candidate: int = 1,
           production: int = 0) -> dict:
    return {"device_id": device, "candidate": candidate, "production": production,
            "samples": samples, "candidate_accuracy": cand, "production_accuracy": prod,
            "candidate_loss": 1 - cand, "production_loss": 1 - prod, "agreement": 0.9}


# ---------------------------------------------------------------- the rule
def test_the_rule_waits_for_enough_reports_then_times_out_into_a_rollback():
    one = [report("a", 0.9, 0.8)]
    assert decide(one, RULES, 10).verdict is Verdict.WAIT
    late = decide(one, RULES, 60)
    assert late.verdict is Verdict.ROLL_BACK and "only 1 of 2" in late.reason


def test_the_rule_promotes_within_the_margin_and_rolls_back_beyond_it():
    assert decide([report("a", 0.79, 0.80), report("b", 0.80, 0.80)], RULES,
                  1).verdict is Verdict.PROMOTE
    worse = decide([report("a", 0.70, 0.80), report("b", 0.75, 0.80)], RULES, 1)
    assert worse.verdict is Verdict.ROLL_BACK and "overall" in worse.reason


def test_the_worst_decile_alone_can_roll_a_candidate_back():
    """Overall better, but the worst device loses 0.3: the fairness rule catches it."""
    reports = [report(f"d{i}", 0.95, 0.85, samples=100) for i in range(9)]
    reports.append(report("weak", 0.40, 0.70, samples=5))
    s = summarize(reports)
    assert s.candidate_accuracy is not None and s.production_accuracy is not None
    assert s.candidate_accuracy > s.production_accuracy
    assert s.candidate_worst_decile == pytest.approx(0.40)
    found = decide(reports, RULES, 1)
    assert found.verdict is Verdict.ROLL_BACK and "worst decile" in found.reason


def test_canaries_are_a_deterministic_per_version_draw():
    devices = [f"d{i}" for i in range(20)]
    first = pick_canaries(devices, 5, 0.25)
    assert len(first) == 5 and first == pick_canaries(list(reversed(devices)), 5, 0.25)
    assert first != pick_canaries(devices, 6, 0.25)  # reshuffled per version
    assert pick_canaries(devices, 5, 0.0) == () and len(pick_canaries(devices[:1], 5, .1)) == 1


def test_rollout_messages_round_trip_and_refuse_out_of_range_figures():
    r = Rollout(3, 4, ("a", "b"), (2,))
    assert decode_rollout(encode_rollout(r)) == r
    rep = CanaryReport("a", 4, 3, 10, 0.9, 0.8, 0.3, 0.4, 0.95, 1.0)
    assert decode_report(encode_report(rep)) == rep
    bad = CanaryReport("a", 4, 3, 10, 1.5, 0.8, 0.3, 0.4, 0.95, 1.0)
    with pytest.raises(RemoteProtocolError, match="candidate_accuracy"):
        decode_report(encode_report(bad))


# ---------------------------------------------------------------- stages in the store
def test_an_old_store_is_migrated_once_its_versions_become_production(tmp_path):
    path = tmp_path / "old.sqlite3"
    store = Store(path)
    store.add_model(0, b"m0", "s0", {"round": 0})
    store.add_model(1, b"m1", "s1", {"round": 1})
    store.db.execute("DROP TABLE stages")  # as a store from before stages
    store.db.execute("DROP TABLE stage_audit")
    store.close()
    store = Store(path)
    assert store.migrate_stages() == 2 and store.migrate_stages() == 0
    assert store.stages() == {0: Stage.PRODUCTION, 1: Stage.PRODUCTION}
    assert {c.actor for c in store.stage_audit()} == {"migration"}


def _live(tmp_path, **rollout) -> Harness:
    h = Harness(tmp_path, rollout=RolloutConfig(**{**RULES.__dict__, **rollout}))
    return h


def _made_version_one(h: Harness) -> None:
    task = h.connect(DEVICES)
    for device in [d for d in DEVICES if task.invites(d)][:2]:
        h.upload(update(device, task))
    h.tick()


def _rollouts(actions) -> list[Rollout]:
    return [decode_rollout(a.payload) for a in actions
            if isinstance(a, Publish) and a.topic == TOPICS.rollout and a.payload]


def _report(h: Harness, device: str, cand: float, prod: float = 0.8) -> None:
    rep = CanaryReport(device, 1, 0, 10, cand, prod, 1 - cand, 1 - prod, 0.9, h.clock.wall)
    h.send(CanaryMessage(TOPICS.canary(device), encode_report(rep), h.clock.at()))


# ---------------------------------------------------------------- the core
def test_with_rollout_off_every_version_is_production_when_made(tmp_path):
    h = Harness(tmp_path)
    _made_version_one(h)
    assert h.store.stages() == {0: Stage.RETIRED, 1: Stage.PRODUCTION}
    assert _rollouts(h.actions) == []  # devices serve every version, as before


def test_with_rollout_off_a_version_made_outside_training_is_production_too(tmp_path):
    """The initial model and a new model line's first version are stored at start, not
    by VersionMaker: with rollout off they are served like any other, so no Rollout is
    published and devices keep serving every version."""
    h = Harness(tmp_path)
    assert h.store.stages() == {0: Stage.PRODUCTION}
    assert not h.store.stages_steered()  # no rule moved a stage: devices need no Rollout
    _made_version_one(h)
    assert _rollouts(h.actions) == []


def test_with_rollout_off_after_an_operator_rollback_each_new_version_is_announced(tmp_path):
    """Devices follow the Rollout once an operator moved a stage: every later version
    must be announced, or they would keep serving the old production."""
    h = Harness(tmp_path)
    _made_version_one(h)
    h.store.request_stage(Command.ROLLBACK, 0, "alice")
    h.tick(1)
    assert h.store.stage_of(2) is Stage.PRODUCTION  # a copy of 0
    task = next(t for t in reversed(tasks(h.actions)))
    for device in [d for d in DEVICES if task.invites(d)][:2]:
        h.upload(update(device, task))
    h.tick(1)
    assert h.store.stage_of(3) is Stage.PRODUCTION
    assert _rollouts(h.actions)[-1].production == 3


def test_a_candidate_waits_for_its_canaries_and_no_round_opens_meanwhile(tmp_path, caplog):
    h = _live(tmp_path)
    _made_version_one(h)
    assert h.store.stage_of(1) is Stage.CANARY
    [rollout] = _rollouts(h.actions)[-1:]
    assert rollout.production == 0 and rollout.candidate == 1
    assert rollout.canaries == pick_canaries(DEVICES, 1, 0.5)
    with caplog.at_level(logging.INFO, "aggregator.service"):
        assert tasks(h.tick(5)) == []
    assert "under canary evaluation" in caplog.text


def test_good_reports_promote_and_training_goes_on(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    canaries = _rollouts(h.actions)[-1].canaries
    for device in canaries:
        _report(h, device, 0.81)
    out = h.tick(1)
    assert h.store.stage_of(1) is Stage.PRODUCTION and h.store.stage_of(0) is Stage.RETIRED
    assert _rollouts(out)[-1] == Rollout(1, None, (), ())
    [task] = tasks(out)  # the next round opens from version 1 at once
    assert task.model_version == 1


def test_bad_reports_roll_back_and_the_next_version_is_a_copy_of_production(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    for device in _rollouts(h.actions)[-1].canaries:
        _report(h, device, 0.30)
    out = h.tick(1)
    assert h.store.stage_of(1) is Stage.ROLLED_BACK
    assert h.store.stage_of(2) is Stage.PRODUCTION and h.core.state.version == 2
    assert h.store.model_history()[-1].metric("copy_of") == 0
    for name, value in WEIGHTS.items():
        assert (h.core.state.weights[name] == value).all()
    assert _rollouts(out)[-1] == Rollout(2, None, (), (1,))
    reasons = [c.reason for c in h.store.stage_audit(1)]
    assert any("worse than production" in r for r in reasons)


def test_reports_from_a_non_canary_are_refused_and_a_resend_counts_once(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    canaries = _rollouts(h.actions)[-1].canaries
    outsider = next(d for d in DEVICES if d not in canaries)
    _report(h, outsider, 0.9)
    _report(h, canaries[0], 0.9)
    _report(h, canaries[0], 0.9)
    assert h.store.counter("canary_reports_refused") == 1  # a resend is kept once, quietly
    assert len(h.store.canary_reports(1)) == 1


def test_a_restart_mid_canary_resumes_the_same_decision(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    canaries = _rollouts(h.actions)[-1].canaries
    _report(h, canaries[0], 0.30)
    h.store.close()
    again = Harness(tmp_path, clock=h.clock, rollout=h.config.rollout)
    assert again.core.lifecycle.holds() and again.store.stage_of(1) is Stage.CANARY
    _made_report = CanaryReport(canaries[1], 1, 0, 10, 0.3, 0.8, 0.7, 0.2, 0.5, 0.0)
    again.send(CanaryMessage(TOPICS.canary(canaries[1]), encode_report(_made_report),
                             again.clock.at()))
    again.tick(1)
    assert again.store.stage_of(1) is Stage.ROLLED_BACK


def test_operators_roll_back_promote_and_pin_with_an_audit_trail(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    for device in _rollouts(h.actions)[-1].canaries:
        _report(h, device, 0.85)
    h.tick(1)
    assert h.store.stage_of(1) is Stage.PRODUCTION
    h.store.request_stage(Command.ROLLBACK, 0, "alice")
    h.tick(1)
    assert h.store.stage_of(1) is Stage.ROLLED_BACK
    assert h.store.stage_of(2) is Stage.PRODUCTION  # a copy of 0
    h.store.request_stage(Command.PIN, 2, "bob")
    h.store.request_stage(Command.PROMOTE, 1, "carol")  # rolled back: refused
    h.tick(1)
    assert h.core.lifecycle.life.pinned == 2
    actors = {c.actor for c in h.store.stage_audit()}
    assert {"operator:alice", "operator:bob"} <= actors
    outcomes = [h.store.stage_request(i)["outcome"] for i in (1, 2, 3)]
    assert outcomes[:2] == ["done", "done"] and outcomes[2].startswith("refused")


def test_the_stage_tables_are_additive(tmp_path):
    Store(tmp_path / "s.sqlite3").close()
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"stages", "stage_audit", "canary_reports", "stage_requests", "models"} <= names


def test_rolling_back_to_production_during_a_canary_rejects_the_candidate(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    h.store.request_stage(Command.ROLLBACK, 0, "dave")
    out = h.tick(1)
    assert h.store.stage_of(1) is Stage.ROLLED_BACK
    assert h.store.stage_of(2) is Stage.PRODUCTION and h.core.state.version == 2
    assert h.store.model_history()[-1].metric("copy_of") == 0  # training goes on from 0
    assert _rollouts(out)[-1] == Rollout(2, None, (), (1,))
    h.store.request_stage(Command.ROLLBACK, 2, "dave")  # no candidate now: refused
    h.tick(1)
    assert h.store.stage_request(2)["outcome"].startswith("refused: version 2 is production")


def test_a_candidate_made_with_no_device_available_draws_its_canaries_later(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    life = h.core.lifecycle.life
    assert life.canary is not None
    life.canary = dataclasses.replace(life.canary, canaries=())  # as if none was available
    out = h.tick(1)
    assert _rollouts(out)[-1].canaries == pick_canaries(DEVICES, 1, 0.5)


def test_a_store_that_lost_its_production_version_serves_the_last_one_served(tmp_path):
    h = _live(tmp_path)
    _made_version_one(h)
    for device in _rollouts(h.actions)[-1].canaries:
        _report(h, device, 0.85)
    h.tick(1)  # 1 is production, 0 retired
    h.store.db.execute("DELETE FROM models WHERE version=1")  # as `recover` drops it
    h.store.close()
    again = Harness(tmp_path, clock=h.clock, rollout=h.config.rollout)
    assert again.store.stages() == {0: Stage.PRODUCTION}


def test_the_rollout_table_is_checked_with_one_line_errors():
    from aggregator.config import load_aggregator_config
    from edge_client.shared.settings import ConfigError

    config = load_aggregator_config({"rollout": {"canary_fraction": 0.2}}, "gw.toml")
    assert config.rollout.enabled and config.rollout.min_canary_reports == 3
    assert not load_aggregator_config({}, "gw.toml").rollout.enabled  # off by default
    with pytest.raises(ConfigError, match=r"gw.toml \[rollout\]: rollout.margin"):
        load_aggregator_config({"rollout": {"margin": 2}}, "gw.toml")


def test_canaries_beside_dp_or_secagg_get_a_caution_naming_what_they_bypass():
    from aggregator.lifecycle.config import RolloutConfig, canary_privacy_caution

    on, off = RolloutConfig(canary_fraction=0.1), RolloutConfig()
    assert canary_privacy_caution(off, dp=True, secagg=True) is None
    assert canary_privacy_caution(on, dp=False, secagg=False) is None
    both = canary_privacy_caution(on, dp=True, secagg=True)
    assert both is not None and "outside [privacy] and [secagg]" in both
    only = canary_privacy_caution(on, dp=False, secagg=True)
    assert only is not None and "outside [secagg];" in only and "canary_fraction = 0.1" in only
