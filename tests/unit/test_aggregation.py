"""Strategy math and participation decisions with tiny hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, AsyncConfig, SyncConfig
from aggregator.participation import BufferedAsync, SyncRounds, TaskInfo
from aggregator.strategy import Contribution, FedAvg, weighted_mean
from edge_client.shared.protocol import Update


def _c(device: str, value: float, samples: int, factor: float = 1.0) -> Contribution:
    return Contribution(device, {"w": np.array([value], np.float32)}, samples, factor)


def test_fedavg_is_the_sample_weighted_mean():
    new = FedAvg().aggregate({"w": np.array([1.0], np.float32)},
                             [_c("a", 1.0, 1), _c("b", 4.0, 3)])
    # 1 + (1*1 + 3*4) / 4 = 4.25
    np.testing.assert_allclose(new["w"], [4.25])


def test_server_lr_scales_the_step():
    new = FedAvg().aggregate({"w": np.array([0.0], np.float32)}, [_c("a", 2.0, 1)],
                             server_lr=0.5)
    np.testing.assert_allclose(new["w"], [1.0])


def test_staleness_shrinks_the_step_instead_of_only_reweighting():
    mean = weighted_mean([_c("a", 2.0, 1, 0.5), _c("b", 2.0, 1, 0.5)])
    np.testing.assert_allclose(mean["w"], [1.0])  # sum(n*s*d)/sum(n) = (1+1)/2


def test_weighted_mean_refuses_empty_and_bad_weights():
    with pytest.raises(ValueError):
        weighted_mean([])
    with pytest.raises(ValueError):
        weighted_mean([_c("a", 1.0, 0)])
    with pytest.raises(ValueError):
        weighted_mean([_c("a", 1.0, 1, float("nan"))])


def _update(device="d1", task="t1", base=0) -> Update:
    return Update(device_id=device, task_id=task, nonce="aa" * 8, base_version=base,
                  num_samples=1, tensors={})


def test_sync_waits_for_devices_then_over_selects():
    cfg = AggregatorConfig(sync=SyncConfig(target_updates=2, over_selection=0.5,
                                           wait_for_devices_s=10, min_fraction=0.5))
    rounds = SyncRounds(cfg)
    assert rounds.plan(1, 0, ["a"], now=0.0) is None  # 1 of 2, not waited long enough
    task = rounds.plan(1, 0, ["a", "b", "c", "d"], now=1.0)
    assert task is not None and len(task.expected()) == 3  # ceil(2 * 1.5)
    assert task.deadline == 1.0 + cfg.sync.round_timeout_s


def test_sync_opens_with_fewer_devices_after_waiting():
    cfg = AggregatorConfig(sync=SyncConfig(target_updates=4, min_fraction=0.5,
                                           wait_for_devices_s=10))
    rounds = SyncRounds(cfg)
    assert rounds.plan(1, 0, ["a", "b"], now=0.0) is None
    assert rounds.plan(1, 0, ["a", "b"], now=11.0).expected() == ("a", "b")


def test_sync_closes_at_target_or_deadline():
    cfg = AggregatorConfig(sync=SyncConfig(target_updates=4, min_fraction=0.5))
    rounds = SyncRounds(cfg)
    task = rounds.plan(1, 0, ["a", "b", "c", "d"], now=0.0)
    assert rounds.due(3, task, now=1.0) == "wait"
    assert rounds.due(4, task, now=1.0) == "aggregate"
    assert rounds.due(2, task, now=task.deadline) == "aggregate"
    assert rounds.due(1, task, now=task.deadline) == "abort"


def _deadline_after(rounds: SyncRounds, now: float = 0.0) -> float:
    task = rounds.plan(1, 0, ["a", "b", "c", "d"], now=now)
    assert task is not None and task.deadline is not None
    return task.deadline - now


def test_aborted_rounds_grow_the_deadline_up_to_the_cap_and_a_version_resets_it():
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(
        target_updates=4, round_timeout_s=10, deadline_growth=2, max_round_timeout_s=35)))
    seen = [_deadline_after(rounds)]
    for _ in range(3):
        rounds.round_aborted()
        seen.append(_deadline_after(rounds))
    assert seen == [10, 20, 35, 35]
    rounds.version_made()
    assert _deadline_after(rounds) == 10


def test_the_default_cap_is_eight_round_timeouts_and_growth_one_keeps_deadlines_fixed():
    grown = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=4, round_timeout_s=2)))
    for _ in range(20):
        grown.round_aborted()
    assert _deadline_after(grown) == 16
    fixed = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=4, round_timeout_s=2,
                                                        deadline_growth=1.0)))
    fixed.round_aborted()
    assert _deadline_after(fixed) == 2


@pytest.mark.parametrize(("fields", "message"), [
    ({"deadline_growth": 0.5}, "deadline_growth must be >= 1"),
    ({"round_timeout_s": 60, "max_round_timeout_s": 30}, "max_round_timeout_s (30) must be"),
])
def test_bad_deadline_growth_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SyncConfig(**fields)


def test_sync_verdicts():
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=2)))
    task = rounds.plan(1, 0, ["a", "b", "c", "d", "e"], now=0.0)
    info = TaskInfo("sync", 0, "open")
    member = task.expected()[0]
    outsider = next(d for d in "abcde" if not task.invites(d))
    assert rounds.judge(_update(member, task.task_id), info, task, 0).ack == "accepted"
    late = rounds.judge(_update(member, "old"), TaskInfo("sync", 0, "closed"), task, 1)
    assert (late.ack, late.state) == ("late", "late")
    assert rounds.judge(_update(outsider, task.task_id), info, task, 0).ack == "rejected"
    assert rounds.judge(_update(member, task.task_id, base=5), info, task, 0).ack == "rejected"


def test_async_staleness_limit_and_weights():
    cfg = AggregatorConfig(mode="async", async_=AsyncConfig(max_staleness=2, buffer_size=2))
    buf = BufferedAsync(cfg)
    info = TaskInfo("async", 3, "closed")
    assert buf.judge(_update(base=3), info, None, current_version=5).ack == "accepted"
    verdict = buf.judge(_update(base=3), info, None, current_version=6)
    assert verdict.ack == "rejected" and "staleness 3" in verdict.reason
    assert buf.staleness_factor(_update(base=3), 6) == pytest.approx(0.5)  # 1/sqrt(4)
    assert buf.due(1, None, 0.0) == "wait" and buf.due(2, None, 0.0) == "aggregate"


def test_config_refuses_bad_values():
    with pytest.raises(ValueError):
        AggregatorConfig(mode="semi")
    with pytest.raises(ValueError):
        AggregatorConfig(federation="a/b")
