"""What a device serves, sans-IO: every version until a Rollout, then production only;
canary devices evaluate the candidate; a reboot never serves a stored candidate."""

from __future__ import annotations

import numpy as np

from edge_client.eligibility import Decision
from edge_client.session import actions as act
from edge_client.session.events import CanaryEvaluated, RolloutReceived
from edge_client.session.held_model import HeldModel
from edge_client.session.serving import ServingGate
from edge_client.session.status import StatusBoard
from edge_client.shared.protocol import Topics
from edge_client.shared.protocol.rollout import CanaryReport, Rollout, decode_report

TOPICS = Topics("gate")


def model(version: int) -> HeldModel:
    return HeldModel(version, {"w": np.full(2, version, np.float32)}, {})


def gate(eligible: bool = True) -> ServingGate:
    board = StatusBoard("me", TOPICS, lambda b: b, "s", 60.0)
    board.decision = Decision(eligible, () if eligible else ("busy",), {})
    return ServingGate("me", TOPICS, lambda b: b, board)


def served(actions) -> list[int]:
    return [a.version for a in actions if isinstance(a, act.ServeModel)]


def test_without_a_rollout_every_installed_version_is_served():
    g = gate()
    assert served(g.installed(model(1))) == [1]
    assert served(g.installed(model(2))) == [2]


def test_after_a_rollout_only_production_is_served_and_a_rollback_reverts():
    g = gate()
    g.installed(model(1))
    out = g.handle(RolloutReceived(Rollout(1)))
    assert [a for a in out if isinstance(a, act.SaveRollout)] == [act.SaveRollout(1)]
    assert served(g.installed(model(2))) == []  # a candidate: not served
    assert served(g.handle(RolloutReceived(Rollout(1, 2, ("other",))))) == []
    assert g.served == 1
    assert served(g.installed(model(3))) == []  # the copy of 1 after the rollback...
    assert served(g.handle(RolloutReceived(Rollout(3, None, (), (2,))))) == [3]  # ...served


def test_a_canary_device_evaluates_the_candidate_once_and_reports_it_signed():
    g = gate()
    g.installed(model(1))
    g.handle(RolloutReceived(Rollout(1)))
    g.installed(model(2))
    out = g.handle(RolloutReceived(Rollout(1, 2, ("me",))))
    [evaluate] = [a for a in out if isinstance(a, act.EvaluateCanary)]
    assert (evaluate.candidate.version, evaluate.production.version) == (2, 1)
    assert g.handle(RolloutReceived(Rollout(1, 2, ("me",)))) == []  # evaluated once
    report = CanaryReport("me", 2, 1, 5, 0.9, 0.8, 0.2, 0.3, 0.9, 1.0)
    [publish] = g.handle(CanaryEvaluated(report))
    assert publish.topic == TOPICS.canary("me") and decode_report(publish.payload) == report
    # The aggregator restarted and publishes the Rollout again: the report goes again.
    assert g.handle(RolloutReceived(Rollout(1, 2, ("me",)))) == [publish]


def test_a_canary_waits_for_an_eligible_moment():
    g = gate(eligible=False)
    g.installed(model(1))
    g.handle(RolloutReceived(Rollout(1)))
    g.installed(model(2))
    assert g.handle(RolloutReceived(Rollout(1, 2, ("me",)))) == []
    g.status.decision = Decision(True, (), {})
    assert any(isinstance(a, act.EvaluateCanary)
               for a in g.checked(Decision(False, ("busy",), {})))


def test_a_rebooted_device_that_follows_a_rollout_does_not_serve_its_stored_candidate():
    g = gate()
    assert served(g.resumed(model(2), following=1)) == []
    g2 = gate()
    assert served(g2.resumed(model(2), following=None)) == [2]  # never saw a rollout
