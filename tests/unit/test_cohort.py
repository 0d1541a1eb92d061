"""Tasks invite by a seed-derived cohort: both sides agree, the draw is fair, the task's
size does not grow with the fleet, and old peers fail clearly (docs/protocol.md)."""

from __future__ import annotations

import logging

import msgpack
import pytest

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.participation import SyncRounds
from edge_client.session import actions as act
from edge_client.session.events import LinkUp, TaskReceived
from edge_client.shared.protocol import (
    RemoteProtocolError,
    Status,
    Task,
    TrainConfig,
    decode,
    encode,
)
from edge_client.shared.protocol.cohort import EVERYONE, Cohort, draw, rank
from edge_client.shared.protocol.messages import unpack_map
from tests.unit import session_driver as drv
from tests.unit.session_driver import ScriptedDevice


def _ids(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _plan(devices: list[str], target: int) -> Task:
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=target), seed=7))
    task = rounds.plan(1, 0, devices, now=0.0)
    assert task is not None
    return task


def test_the_device_side_decides_exactly_as_the_aggregator_planned():
    fleet = _ids(1000)
    task = _plan(fleet, target=100)
    received = decode(encode(task), expect=Task)  # what every device reads
    assert received.members is None and received.invited is None  # no ids on the wire
    invited = [d for d in fleet if received.invites(d)]
    assert invited == list(task.expected()) and len(invited) == 100
    assert received.cohort == task.cohort and received.invited_count() == 100


def test_the_cohort_admits_its_fraction_of_any_ids():
    drawn = draw(seed=12345, candidates=_ids(10_000), count=1000)
    assert drawn.cohort.size == 1000 and len(drawn.members) == 1000
    assert drawn.cohort.fraction == pytest.approx(0.1, abs=0.01)
    strangers = _ids(20_000, prefix="other")  # never candidates: the same chance
    share = sum(drawn.cohort.includes(d) for d in strangers) / len(strangers)
    assert share == pytest.approx(0.1, abs=0.01)


def test_ranks_are_uniform_and_keyed_by_the_seed():
    ranks = [rank(1, d) for d in _ids(5000)]
    assert 0.45 < sum(ranks) / len(ranks) / EVERYONE < 0.55
    assert rank(1, "dev-1") != rank(2, "dev-1")


def test_a_cohort_of_everyone_invites_every_device():
    task = _plan(_ids(5), target=5)
    assert task.cohort is not None and task.cohort.cutoff == EVERYONE
    assert all(task.invites(d) for d in [*_ids(5), "latecomer"])


def test_a_bounded_draw_stops_just_past_its_last_candidate():
    drawn = draw(seed=3, candidates=_ids(5), count=5, open_ended=False)
    assert drawn.members == tuple(_ids(5)) and drawn.cohort.cutoff < EVERYONE
    assert draw(seed=3, candidates=_ids(5), count=0).cohort.cutoff == 0


def test_the_task_is_the_same_size_for_10_and_10000_devices(capsys):
    small = len(encode(_plan(_ids(10), target=5)))
    large = len(encode(_plan(_ids(10_000), target=5000)))
    with capsys.disabled():
        print(f"\ntask bytes: 10 devices {small}, 10,000 devices {large}")
    assert small < 400 and abs(large - small) <= 16


def test_an_old_device_refuses_a_cohort_task_with_a_clear_reason():
    payload = encode(_plan(_ids(20), target=5))
    with pytest.raises(RemoteProtocolError, match="unsupported protocol version 2"):
        unpack_map(payload)  # what a version-1 decoder does with every message


def test_a_task_from_an_older_aggregator_still_decodes():
    body = {"v": 1, "kind": "task", "task_id": "r1-0", "mode": "sync", "round": 1,
            "model_version": 0, "invited": ["a"], "chunk_size": 65536, "done": False,
            "cohort": {"seed": 1, "cutoff": EVERYONE, "size": 1, "candidates": 1},
            "train": {"epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
                      "prox_mu": 0.0}}
    task = decode(msgpack.packb(body), expect=Task)
    assert task.cohort is None and task.invites("a") and not task.invites("b")


@pytest.mark.parametrize(("cohort", "problem"), [
    ({"seed": 1, "cutoff": EVERYONE + 1, "size": 1, "candidates": 1}, "cutoff"),
    ({"seed": 1, "cutoff": 5, "size": 2, "candidates": 1}, "size"),
    ({"seed": -1, "cutoff": 5, "size": 1, "candidates": 1}, "seed"),
    ({"seed": 1, "cutoff": 5, "size": 1}, "candidates"),
])
def test_a_bad_cohort_is_refused_with_the_field_named(cohort, problem):
    task = Task(task_id="r1", mode="sync", round=1, model_version=0, train=TrainConfig(),
                cohort=Cohort(1, 1, 1, 1))
    body = msgpack.unpackb(encode(task))
    body["cohort"] = cohort
    with pytest.raises(RemoteProtocolError, match=problem):
        decode(msgpack.packb(body), expect=Task)


def test_other_kinds_stay_at_version_1():
    body = msgpack.unpackb(encode(Status(device_id="a", online=True)))
    body["v"] = 2
    with pytest.raises(RemoteProtocolError, match="version 2 for a status"):
        decode(msgpack.packb(body))


def test_a_device_outside_the_cohort_stays_idle_and_says_why(caplog):
    caplog.set_level(logging.INFO)
    device = ScriptedDevice()
    device.feed(LinkUp())
    device.advance(0)
    device.install(0, drv.weights(0))
    cohort = Cohort(seed=9, cutoff=0, size=3, candidates=40)  # nobody is in
    out = device.feed(TaskReceived(drv.task("r1", invited=None, cohort=cohort)))
    assert device.of(act.StartFit, out) == []
    assert device.session.stats.skipped == {"not invited": 1}
    assert "not invited this time: not in its cohort (3 of 40 devices drawn)" in caplog.text
    everyone = Cohort(seed=9, cutoff=EVERYONE, size=40, candidates=40)
    out = device.feed(TaskReceived(drv.task("r2", invited=None, cohort=everyone)))
    assert len(device.of(act.StartFit, out)) == 1


def test_the_store_keeps_whom_a_cohort_task_invited(tmp_path):
    from aggregator.store import Store

    store = Store(tmp_path / "agg.sqlite3")
    task = _plan(_ids(50), target=5)
    store.add_task(task, encode(task))  # the wire message names no one
    assert decode(encode(task), expect=Task).members is None
    assert store.task_state(task.task_id)[3].members == task.expected()
    opened, _ = store.open_task()
    assert opened.expected() == task.expected() and len(task.expected()) == 5
    store.close()
