"""Presence: bounded newcomers, no-show benching, top-ups with proven devices, and
updates from devices a closed round never invited."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, SyncConfig, load_aggregator_config
from aggregator.no_shows import NoShows
from aggregator.participation import SyncRounds, TaskInfo
from aggregator.presence import Presence, PresenceConfig, Taken
from aggregator.store import Store
from edge_client.shared.protocol import Status, Task, TrainConfig, Update, encode
from edge_client.shared.settings import ConfigError


def _status(device: str, online: bool = True, eligible: bool = True) -> Status:
    return Status(device_id=device, online=online, eligible=eligible, time=1.0)


def _task(task_id: str, invited: tuple[str, ...] | None, mode: str = "sync") -> Task:
    return Task(task_id=task_id, mode=mode, round=1, model_version=0, train=TrainConfig(),
                invited=invited)


def _update(device: str, task_id: str) -> Update:
    return Update(device_id=device, task_id=task_id, nonce="ab" * 8, base_version=0,
                  num_samples=1, tensors={"w": np.zeros(2, np.float32)})


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "agg.sqlite3")
    yield store
    store.close()


def _presence(store: Store, **config) -> Presence:
    return Presence(PresenceConfig(**config), store)


def test_newcomers_are_bounded_and_the_oldest_idle_one_makes_room(store, caplog):
    caplog.set_level(logging.INFO, logger="aggregator.presence")
    presence = _presence(store, max_newcomers=3)
    assert [presence.on_status(_status(d), 0.0) for d in "abc"] == [Taken.TRACKED] * 3
    assert presence.on_status(_status("d"), 0.0) is Taken.FULL  # nobody idle to replace
    assert presence.on_status(_status("zz", online=False), 0.0) is Taken.FULL
    assert presence.on_status(_status("b", eligible=False), 0.0) is Taken.TRACKED
    assert presence.on_status(_status("d"), 0.0) is Taken.TRACKED  # b made room
    assert presence.candidates() == ["a", "c", "d"]
    presence.write()  # statuses are soft state: written in one go
    assert sorted(d["device_id"] for d in store.devices()) == ["a", "c", "d"]
    full = [r.getMessage() for r in caplog.records if "not taking the status" in r.getMessage()]
    assert len(full) == 1 and "of d, nor of other new devices" in full[0]  # once, not twice


def test_a_newcomer_that_is_online_but_not_eligible_is_shown_not_invited(store):
    presence = _presence(store, max_newcomers=2)
    assert presence.on_status(_status("busy", eligible=False), 0.0) is Taken.TRACKED
    assert presence.candidates() == []
    presence.write()  # statuses are soft state: written in one go
    assert [(d["device_id"], d["eligible"]) for d in store.devices()] == [("busy", 0)]
    presence.on_status(_status("a"), 0.0)
    assert presence.on_status(_status("b"), 0.0) is Taken.TRACKED  # busy, idle, made room


def test_proven_devices_are_not_newcomers_and_junk_rows_go_at_start(store):
    store.set_device(_status("ghost"))
    store.set_device(_status("honest"))
    store.add_update(_update("honest", "t1"), b"payload", "aggregated")
    presence = _presence(store, max_newcomers=1)
    assert [d["device_id"] for d in store.devices()] == ["honest"]  # ghost's row dropped
    assert presence.proven == {"honest"}
    assert presence.on_status(_status("new"), 0.0) is Taken.TRACKED
    assert presence.on_status(_status("honest"), 0.0) is Taken.TRACKED  # not counted
    assert presence.on_status(_status("honest", online=False), 0.0) is Taken.TRACKED


def test_two_rounds_without_an_update_bench_a_device_until_a_status_after_the_backoff(
        store, caplog):
    caplog.set_level(logging.INFO, logger="aggregator.presence")
    store.add_update(_update("slow", "t0"), b"p", "aggregated")
    presence = _presence(store, max_no_shows=2, no_show_backoff_s=100)
    for device in ("slow", "good"):
        presence.on_status(_status(device), 0.0)
    for i, now in enumerate((10.0, 20.0)):
        task = _task(f"t{i + 1}", ("good", "slow"))
        presence.round_opened(task)
        presence.update_seen("good", task.task_id)
        presence.round_ended(task.task_id, now)
    assert presence.candidates() == ["good"]
    assert "not inviting 1 benched device(s) (slow)" in caplog.text
    presence.on_status(_status("slow"), 119.0)  # in its backoff: still out
    assert presence.candidates() == ["good"]
    presence.on_status(_status("slow"), 120.0)  # backoff over: one more chance
    assert presence.candidates() == ["good", "slow"]
    task = _task("t3", ("slow",))
    presence.round_opened(task)
    presence.round_ended(task.task_id, 130.0)
    assert presence.candidates() == ["good"]  # benched again after a single no-show
    presence.update_seen("slow", "t1")  # a late update: back at once
    assert presence.candidates() == ["good", "slow"]


def test_a_device_that_said_it_went_away_is_not_a_no_show(store):
    presence = _presence(store, max_no_shows=1)
    presence.on_status(_status("a"), 0.0)
    task = _task("t1", ("a",))
    presence.round_opened(task)
    presence.on_status(_status("a", eligible=False), 1.0)  # unplugged mid-round
    presence.on_status(_status("a"), 2.0)
    assert presence.round_ended("t1", 3.0) == []
    assert presence.candidates() == ["a"]


def test_a_benched_newcomer_is_dropped_once_its_backoff_passes_without_a_sign_of_life(
        store):
    presence = _presence(store, max_no_shows=1, no_show_backoff_s=50, max_newcomers=2)
    for device in ("ghost", "slow"):
        presence.on_status(_status(device), 0.0)
    presence.round_opened(_task("t1", ("ghost", "slow")))
    assert presence.round_ended("t1", 1.0) == []  # benched, still tracked: may be late
    assert presence.candidates() == []
    presence.update_seen("slow", "t1")  # a late update: proven, and back
    assert presence.candidates() == ["slow"]
    assert presence.on_status(_status("ghost"), 10.0) is Taken.TRACKED  # still benched
    assert presence.candidates() == ["slow"]
    presence.round_opened(_task("t2", ("slow",)))
    presence.update_seen("slow", "t2")
    assert presence.round_ended("t2", 51.0) == ["ghost"]  # to be cleared from the broker
    presence.write()  # statuses are soft state: written in one go
    assert [d["device_id"] for d in store.devices()] == ["slow"]
    assert presence.on_status(_status("ghost"), 52.0) is Taken.TRACKED  # one more chance
    assert presence.candidates() == ["ghost", "slow"]


def test_a_benched_newcomer_is_the_first_to_make_room(store):
    presence = _presence(store, max_no_shows=1, max_newcomers=2)
    for device in ("ghost", "honest"):
        presence.on_status(_status(device), 0.0)
    presence.round_opened(_task("t1", ("ghost",)))
    presence.round_ended("t1", 1.0)
    assert presence.on_status(_status("new"), 2.0) is Taken.TRACKED
    assert presence.candidates() == ["honest", "new"]
    presence.write()  # statuses are soft state: written in one go
    assert sorted(d["device_id"] for d in store.devices()) == ["honest", "new"]


def test_a_device_whose_update_was_refused_showed_up_but_has_no_track_record(store):
    presence = _presence(store, max_no_shows=1)
    presence.on_status(_status("a"), 0.0)
    presence.round_opened(_task("t1", ("a",)))
    presence.sent_something("a")
    presence.round_ended("t1", 1.0)
    assert presence.candidates() == ["a"] and presence.proven == set()


def test_async_tasks_and_other_rounds_count_no_no_shows():
    shows = NoShows(max_no_shows=1, backoff_s=10)
    shows.round_opened(_task("v1-async", None, mode="async"))
    assert shows.round_ended("v1-async", 1.0).missed == ()
    shows.round_opened(_task("t2", ("a",)))
    assert shows.round_ended("other", 1.0).missed == ()  # not the round it watches
    assert shows.round_ended("t2", 1.0).benched == ("a",)


def test_invitations_are_topped_up_with_proven_devices():
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=3), seed=1))
    ghosts = [f"ghost-{i:03d}" for i in range(300)]
    proven = {"a", "b", "c"}
    task = rounds.plan(1, 0, sorted([*ghosts, *proven]), now=0.0, proven=proven)
    assert task is not None and proven <= set(task.expected())
    assert len(task.expected()) <= 6  # at most as many newcomers again as the round needs


def test_without_newcomers_the_draw_is_what_it_always_was():
    config = AggregatorConfig(sync=SyncConfig(target_updates=2), seed=3)
    online = ["a", "b", "c", "d", "e"]
    plain = SyncRounds(config).plan(1, 0, online, now=0.0)
    topped = SyncRounds(config).plan(1, 0, online, now=0.0, proven=set(online))
    assert plain.expected() == topped.expected() and len(plain.expected()) == 2
    assert plain.cohort == topped.cohort and topped.invited is None


def test_a_closed_round_refuses_updates_from_devices_it_never_invited():
    rounds = SyncRounds(AggregatorConfig())
    closed = TaskInfo("sync", 0, "closed", task=_task("t1", ("a", "b")))
    assert rounds.judge(_update("a", "t1"), closed, None, 1).ack == "late"
    verdict = rounds.judge(_update("mallory", "t1"), closed, None, 1)
    assert verdict.ack == "rejected" and verdict.reason == "device was not invited to this round"


def test_task_state_reports_who_a_task_invited(store):
    task = _task("t1", ("a", "b"))
    store.add_task(task, encode(task))
    store.add_task(_task("v1-async", None, mode="async"), encode(_task("v1-async", None,
                                                                        mode="async")))
    assert store.task_state("t1")[:3] == ("sync", 0, "closed")
    assert store.task_state("t1")[3].invited == ("a", "b")
    assert store.task_state("v1-async")[3].invites("anyone")


@pytest.mark.parametrize(("table", "message"), [
    ({"max_no_shows": 0}, "presence.max_no_shows must be >= 1, not 0"),
    ({"no_show_backoff_s": -1}, "presence.no_show_backoff_s must be >= 0"),
    ({"max_newcomers": 0}, "presence.max_newcomers must be >= 1, not 0"),
    ({"max_newcomer": 5}, "unknown key 'max_newcomer' in config [presence]"),
    ({"max_no_shows": "2"}, "config [presence] max_no_shows must be int, got str"),
])
def test_bad_presence_settings_are_refused_with_the_key(table, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_aggregator_config({"presence": table})
