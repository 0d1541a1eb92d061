"""The async concurrency bound (aggregator/concurrency.py): at most C devices invited at
a time, more as updates come in, and staleness settings that follow from C."""

from __future__ import annotations

import logging

import pytest

from aggregator.concurrency import REINVITE_S, staleness_advice, typical_staleness
from aggregator.config import AggregatorConfig, AsyncConfig
from aggregator.participation import BufferedAsync, TaskInfo
from edge_client.shared.protocol import Task, Update, decode, encode

FLEET = [f"dev-{i:03d}" for i in range(40)]


def _async(concurrency: int, buffer_size: int = 2, max_staleness: int = 10) -> BufferedAsync:
    return BufferedAsync(AggregatorConfig(mode="async", async_=AsyncConfig(
        buffer_size=buffer_size, concurrency=concurrency, max_staleness=max_staleness)))


def _update(device: str, base: int = 0) -> Update:
    return Update(device_id=device, task_id=f"v{base}-async", nonce="aa" * 8,
                  base_version=base, num_samples=1, tensors={})


def _invited(task: Task) -> list[str]:
    received = decode(encode(task), expect=Task)  # as the devices decide it
    return [d for d in FLEET if received.invites(d)]


def test_without_a_bound_every_device_may_train():
    task = _async(0).plan(1, 0, FLEET, now=0.0)
    assert task is not None and task.cohort is None and task.invites("anyone")


def test_a_task_invites_at_most_concurrency_devices_and_says_who_waits(caplog):
    caplog.set_level(logging.INFO)
    buf = _async(4)
    task = buf.plan(1, 0, FLEET, now=0.0)
    assert task is not None and len(task.expected()) == 4 and _invited(task) == list(
        task.expected())
    assert "36 available device(s) not invited for now: 4 of [async] concurrency = 4 " \
           "are training" in caplog.text


def test_places_freed_by_updates_are_filled_by_widening_the_same_task():
    buf = _async(4)
    task = buf.plan(1, 0, FLEET, now=0.0)
    first = list(task.expected())
    assert not buf.wants_reinvite(REINVITE_S)  # no room yet
    info = TaskInfo("async", 0, "open", task)
    assert buf.judge(_update(first[0]), info, task, 0).ack == "accepted"
    assert buf.judge(_update(first[1]), info, task, 0).ack == "accepted"
    assert not buf.wants_reinvite(0.5) and buf.wants_reinvite(REINVITE_S)
    wider = buf.reinvite(task, FLEET, now=REINVITE_S)
    assert wider is not None and wider.task_id == task.task_id
    added = sorted(set(wider.expected()) - set(first))
    assert len(added) == 2 and set(first) <= set(_invited(wider))
    assert len(_invited(wider)) == 6  # 2 answered, 4 training: the bound holds
    assert buf.reinvite(wider, FLEET, now=2 * REINVITE_S) is None  # full again


def test_devices_that_go_away_or_grow_too_stale_free_their_places():
    buf = _async(4, max_staleness=1)
    task = buf.plan(1, 0, FLEET, now=0.0)
    gone = task.expected()[0]
    rest = [d for d in FLEET if d != gone]
    assert buf.reinvite(task, rest, now=5.0) is not None  # offline: its place is free
    nxt = buf.plan(3, 2, FLEET, now=10.0)  # two versions on: every invitation expired
    assert nxt is not None and len(nxt.expected()) == 4


def test_the_next_version_invites_only_as_many_as_there_is_room_for():
    buf = _async(4)
    task = buf.plan(1, 0, FLEET, now=0.0)
    info = TaskInfo("async", 0, "open", task)
    for device in task.expected()[:2]:
        buf.judge(_update(device), info, task, 0)
    nxt = buf.plan(2, 1, FLEET, now=1.0)
    assert nxt is not None and len(nxt.expected()) == 2
    assert not set(nxt.expected()) & set(task.expected()[2:])  # still training: not drawn


@pytest.mark.parametrize(("fields", "message"), [
    ({"concurrency": -1}, "async.concurrency must be >= 0"),
    ({"concurrency": 5, "buffer_size": 10}, r"async.concurrency \(5\) must be >= buffer_size"),
])
def test_bad_concurrency_settings_are_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        AsyncConfig(**fields)
    assert "\n" not in str(err.value)


def test_max_staleness_advice_follows_from_concurrency_and_buffer():
    cfg = AsyncConfig(buffer_size=100, concurrency=1000, max_staleness=10)
    assert typical_staleness(cfg) == 10
    advice = staleness_advice(cfg)
    assert advice is not None and "set max_staleness >= 20" in advice and "\n" not in advice
    assert staleness_advice(AsyncConfig(buffer_size=100, concurrency=200)) is None
    assert staleness_advice(AsyncConfig(buffer_size=100, max_staleness=0)) is None  # no bound


@pytest.mark.parametrize("concurrency", [2, 3])
def test_a_bounded_async_federation_runs_to_the_end_in_memory(tmp_path, concurrency):
    from tests.unit.paired_harness import Federation

    fed = Federation(tmp_path, devices=6, mode="async", rounds=4,
                     async_=AsyncConfig(buffer_size=2, concurrency=concurrency,
                                        max_staleness=3))
    participation = fed.aggregator.core.participation
    widened: list[Task] = []
    reinvite = participation.reinvite

    def spy(task: Task, online: list[str], now: float) -> Task | None:
        wider = reinvite(task, online, now)
        widened.extend([wider] if wider is not None else [])
        return wider

    participation.reinvite = spy  # type: ignore[method-assign]
    fed.start()
    fed.run_to_end()
    agg = fed.aggregator
    assert [v.version for v in agg.versions] == [1, 2, 3, 4]
    assert agg.store.rejections() == []  # nothing thrown away as stale
    if concurrency == 3:  # a straggler of one version frees its place during the next
        assert widened and all(w.cohort is not None for w in widened)
        stored = agg.store.task_state(widened[0].task_id)[3]
        assert stored.cohort is not None and stored.cohort.size >= widened[0].cohort.size
    fed.assert_no_update_lost()
