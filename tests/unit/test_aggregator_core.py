"""The aggregator core without a broker or a clock: events in, actions out.

Every test scripts the time (`Clock`), feeds the core what MQTT would deliver, and looks
at the actions it answers and the state it keeps in the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig, AsyncConfig, SyncConfig
from aggregator.core import (
    AggregatorCore,
    ClearRetained,
    LinkUp,
    Publish,
    PublishTask,
    SecAggChunk,
    SendAck,
    SetTraining,
    StatusMessage,
    Subscribe,
    Tick,
    UpdateChunk,
    VersionMade,
)
from aggregator.secagg.config import SecAggConfig
from aggregator.store import Store
from edge_client.secagg_session import DeviceSecAgg
from edge_client.shared.protocol import Ack, Status, Task, Topics, TrainConfig, Update, encode
from edge_client.shared.protocol.chunking import split
from edge_client.shared.secagg import Phase
from edge_client.shared.secagg.task import SecAggTask
from tests.unit.scripted_clock import ScriptedClock as Clock

FED = "core"
TOPICS = Topics(FED)
WEIGHTS = {"b": np.zeros(3, np.float32), "w": np.zeros((2, 4), np.float32)}
SIZE = 11


def store_config(where: Path | str) -> dict[str, Path | str]:
    """The AggregatorConfig keys that put the store `where`."""
    if isinstance(where, str):
        return {"db_url": where}
    return {"db_path": where if where.suffix == ".sqlite3" else where / "agg.sqlite3"}


class Harness:
    """One core, its store, a clock, and what it answered so far."""

    def __init__(self, where: Path | str, clock: Clock | None = None, **config) -> None:
        """`where`: a folder for an SQLite store, its file (*.sqlite3), or a
        postgresql:// URL (the `store_url` fixture gives either backend)."""
        config.setdefault("sync", SyncConfig(target_updates=2, min_fraction=1.0,
                                             round_timeout_s=60))
        config.update(store_config(where))
        self.config = AggregatorConfig(federation=FED, train=TrainConfig(epochs=1), **config)
        self.clock = clock or Clock()
        self.store = Store(self.config.store_location)
        self.core = AggregatorCore(self.config, self.store, self.clock.at(), lambda b: b,
                                   initial_weights=WEIGHTS)
        self.actions: list = []

    def send(self, event) -> list:
        out = self.core.handle(event)
        self.actions += out
        return out

    def tick(self, advance: float = 0.0) -> list:
        self.clock.advance(advance)
        return self.send(Tick(self.clock.at(), connected=True))

    def connect(self, devices) -> Task:
        """Connect, take the devices' statuses, and open the first round."""
        self.send(LinkUp(self.clock.at()))
        for device in devices:
            status = Status(device_id=device, online=True, model_version=0,
                            time=self.clock.wall)
            self.send(StatusMessage(TOPICS.status(device), encode(status), False,
                                    self.clock.at()))
        [task] = tasks(self.tick(self.config.presence_settle_s))
        return task

    def upload(self, update: Update) -> list[Ack]:
        out = []
        for chunk in split(encode(update), update.nonce, 1024):
            out += self.send(UpdateChunk(TOPICS.update(update.device_id), chunk, False,
                                         self.clock.at()))
        return [a.ack for a in out if isinstance(a, SendAck)]


def tasks(actions) -> list[Task]:
    return [a.task for a in actions if isinstance(a, PublishTask)]


def update(device: str, task: Task, value: float = 0.1, nonce: str = "",
           base: int | None = None) -> Update:
    return Update(device_id=device, task_id=task.task_id, nonce=nonce or f"{device}-{task.task_id}",
                  base_version=task.model_version if base is None else base, num_samples=10,
                  tensors={k: np.full_like(v, value) for k, v in WEIGHTS.items()},
                  metrics={"train_s": 0.5})


# ---------------------------------------------------------------- plain rounds
def test_a_round_makes_a_version_publishes_the_model_and_opens_the_next(store_url):
    h = Harness(store_url)
    task = h.connect(["dev-0", "dev-1", "dev-2"])
    subscribed = [a.topic for a in h.actions if isinstance(a, Subscribe)]
    assert subscribed == [TOPICS.all_updates, TOPICS.all_statuses]
    assert task.mode == "sync" and len(task.expected()) == 2
    assert task.deadline == h.clock.wall + 60  # the scripted wall clock, not the real one
    acks = [a for d in task.expected() for a in h.upload(update(d, task, 0.2))]
    assert [a.status for a in acks] == ["accepted", "accepted"]
    assert h.core.state.version == 0  # nothing aggregates between ticks
    out = h.tick(1.0)
    [made] = [a for a in out if isinstance(a, VersionMade)]
    assert made.report.version == 1 and made.report.updates == 2
    assert made.report.round_wall_s == pytest.approx(1.0)
    assert made.snapshot.version == 1 and made.snapshot.task is None
    assert np.allclose(made.snapshot.global_weights["w"], 0.2)
    assert any(isinstance(a, Publish) and a.topic == TOPICS.model and a.retain for a in out)
    [following] = tasks(out)
    assert following.round == 2 and following.model_version == 1
    row = h.store.model_history()[-1]
    assert row.updates == 2 and row.devices == tuple(sorted(task.expected()))
    snapshot = h.core.state.snapshot()
    assert snapshot.history[-1].version == 1 and snapshot.task == following
    with pytest.raises(TypeError):
        snapshot.global_weights["w"] = np.ones(3)  # read-only for other threads


def test_a_resend_is_acked_as_a_duplicate_and_stored_once(store_url):
    h = Harness(store_url)
    task = h.connect(["dev-0", "dev-1"])
    first = update("dev-0", task)
    assert [a.status for a in h.upload(first)] == ["accepted"]
    again = update("dev-0", task, nonce="another-nonce")  # the ack was lost: sent again
    assert [a.status for a in h.upload(again)] == ["duplicate"]
    assert h.store.counter("duplicates") == 1 and len(h.core.state.pending) == 1


def test_an_update_after_its_round_closed_is_acked_late_and_not_aggregated(tmp_path):
    h = Harness(tmp_path)
    task = h.connect(["dev-0", "dev-1", "dev-2"])
    h.upload(update(task.expected()[0], task))
    h.upload(update(task.expected()[1], task))
    h.tick(1.0)  # version 1; round 2 opens
    [late] = h.upload(update(task.expected()[0], task, nonce="resent-late"))
    assert late.status == "duplicate"  # the same device and task: already stored
    missing = next(d for d in ["dev-0", "dev-1", "dev-2"] if d not in task.expected())
    [refused] = h.upload(update(missing, task))
    assert refused.status == "rejected" and "not invited" in refused.reason
    h2 = Harness(tmp_path / "b", sync=SyncConfig(target_updates=2, min_fraction=0.5,
                                                 round_timeout_s=60))
    task = h2.connect(["dev-0", "dev-1"])
    h2.upload(update("dev-0", task))
    h2.tick(61)  # the deadline: one of two is enough at min_fraction 0.5
    assert h2.core.state.version == 1
    [late] = h2.upload(update("dev-1", task))
    assert late.status == "late" and len(h2.core.state.pending) == 0
    assert h2.store.count_updates("late") == 1


@pytest.mark.parametrize(("change", "reason"), [
    ({"base": 7}, "base version 7"),
    ({"task_id": "r9-unknown"}, "unknown task"),
])
def test_an_update_the_round_cannot_take_is_rejected_with_its_reason(store_url, change,
                                                                      reason):
    h = Harness(store_url)
    task = h.connect(["dev-0", "dev-1"])
    if "task_id" in change:
        task = Task(task_id=change["task_id"], mode="sync", round=9, model_version=0,
                    train=TrainConfig())
    [ack] = h.upload(update("dev-0", task, base=change.get("base")))
    assert ack.status == "rejected" and reason in ack.reason
    assert [r[2] for r in h.store.rejections()] == [ack.reason]
    assert len(h.core.state.pending) == 0


def test_a_round_short_of_updates_at_its_deadline_starts_again_with_a_longer_one(
        store_url, caplog):
    h = Harness(store_url)
    task = h.connect(["dev-0", "dev-1"])
    h.upload(update("dev-0", task))
    caplog.set_level(logging.INFO, logger="aggregator.service")
    assert tasks(h.tick(30)) == []
    assert any("waiting for updates" in r.getMessage() and "1 of 2 updates" in r.getMessage()
               and "dev-1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    h.tick(31)  # past the deadline with 1 of 2
    assert h.core.state.task is None and len(h.core.state.pending) == 0
    assert h.store.task_state(task.task_id)[2] == "aborted"
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "reached its deadline with 1 of 2 updates" in line and "90 s deadline" in line
    [again] = tasks(h.tick(0.1))
    assert again.round == 1 and again.deadline == pytest.approx(h.clock.wall + 90)


def test_pausing_holds_rounds_and_says_why(store_url, caplog):
    h = Harness(store_url)
    h.send(SetTraining(False))
    caplog.set_level(logging.INFO, logger="aggregator.service")
    h.send(LinkUp(h.clock.at()))
    assert tasks(h.tick(5)) == [] and h.core.state.snapshot().paused
    assert any("training is paused" in r.getMessage() for r in caplog.records)
    h.send(SetTraining(True))
    assert h.tick(0.1) == []  # no device yet: it waits for devices, and says so
    assert any("waiting for devices" in r.getMessage() for r in caplog.records)


def test_a_restart_resumes_the_open_round_and_its_stored_updates(store_url):
    clock = Clock()
    h = Harness(store_url, clock)
    task = h.connect(["dev-0", "dev-1"])
    h.upload(update("dev-0", task))
    h.store.close()  # a crash: nothing but the store survives
    again = Harness(store_url, clock)
    assert again.core.state.task == task and len(again.core.state.pending) == 1
    again.send(LinkUp(clock.at()))
    assert task in tasks(again.actions)  # the open task is published again
    [dup] = again.upload(update("dev-0", task, nonce="resent"))
    assert dup.status == "duplicate"
    assert [a.status for a in again.upload(update("dev-1", task))] == ["accepted"]
    assert any(isinstance(a, VersionMade) for a in again.tick(1.0))
    assert again.core.state.version == 1


def test_async_buffers_updates_into_versions_with_no_deadline(store_url):
    h = Harness(store_url, mode="async", async_=AsyncConfig(buffer_size=2))
    task = h.connect(["dev-0", "dev-1"])
    assert task.mode == "async" and task.deadline is None
    for device in ("dev-0", "dev-1"):
        h.upload(update(device, task))
    out = h.tick(1.0)
    assert [a.report.version for a in out if isinstance(a, VersionMade)] == [1]
    [following] = tasks(out)
    [stale] = h.upload(update("dev-0", task, nonce="stale"))  # async: staleness 1 is fine
    assert following.model_version == 1 and stale.status == "duplicate"


def test_a_retained_update_chunk_is_cleared_and_a_bad_status_refused(store_url):
    h = Harness(store_url)
    out = h.send(UpdateChunk(TOPICS.update("dev-0"), b"junk", True, h.clock.at()))
    assert out[0] == ClearRetained(TOPICS.update("dev-0"))
    out = h.send(StatusMessage(TOPICS.status("dev-0"), b"\x90", True, h.clock.at()))
    assert out == [ClearRetained(TOPICS.status("dev-0"))]
    assert h.store.counter("statuses_refused") == 1


def test_every_version_is_done_then_devices_are_told_to_stop(store_url):
    h = Harness(store_url, rounds=1)
    task = h.connect(["dev-0", "dev-1"])
    for device in task.expected():
        h.upload(update(device, task))
    out = h.tick(1.0)
    assert any(isinstance(a, VersionMade) for a in out) and tasks(out) == []
    [done] = tasks(h.tick(0.1))
    assert done.done and h.core.state.done_published and h.core.state.snapshot().finished


def test_an_async_update_after_the_last_version_is_late_and_not_held(store_url):
    """At fleet size, thousands of async updates arrive after training ends: each is
    kept on disk as late and answered so, never folded into a round that will not come."""
    h = Harness(store_url, mode="async", rounds=1, async_=AsyncConfig(buffer_size=2))
    task = h.connect(["dev-0", "dev-1", "dev-2"])
    for device in ("dev-0", "dev-1"):
        h.upload(update(device, task))
    assert any(isinstance(a, VersionMade) for a in h.tick(1.0))
    assert h.core.state.finished
    [ack] = h.upload(update("dev-2", task))
    assert ack.status == "late" and ack.reason == "training has finished"
    assert len(h.core.state.pending) == 0


# ---------------------------------------------------------------- secure rounds
def test_a_secure_round_with_dropouts_makes_a_version_from_the_survivors(store_url, caplog):
    h = Harness(store_url, sync=SyncConfig(target_updates=5, min_fraction=0.6,
                                          round_timeout_s=60),
                secagg=SecAggConfig(enabled=True, phase_timeout_s=10, graph="complete"))
    devices = [f"dev-{i}" for i in range(5)]
    task = h.connect(devices)
    assert task.secagg is not None and task.codec is None
    assert TOPICS.all_secagg in [a.topic for a in h.actions if isinstance(a, Subscribe)]
    [refused] = h.upload(update("dev-0", task))
    assert refused.status == "rejected" and "secure aggregation" in refused.reason
    settings = SecAggTask.from_wire(task.secagg)
    sessions = {d: DeviceSecAgg(d, TOPICS, 2**20, seal=lambda b: b) for d in devices}
    sessions["dev-3"].silent_from = Phase.MASKED_INPUT  # keys shared, then gone
    rng = np.random.default_rng(1)
    caplog.set_level(logging.INFO, logger="aggregator.service")
    h.tick(1.0)  # nobody has advertised keys yet
    [waiting] = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert "secure round 1 in phase advertise_keys: 5 devices still to answer" in waiting

    def up(device, chunks):
        for topic, chunk in chunks:
            h.send(SecAggChunk(topic, chunk, h.clock.at()))

    for d in devices:
        up(d, sessions[d].join(task, settings, rng.normal(0, 0.1, SIZE)))
    made = []
    for _ in range(8):
        out = h.tick(11)  # a silent device holds each later phase to its deadline
        made += [a for a in out if isinstance(a, VersionMade)]
        if made:
            break
        for action in out:
            relay = TOPICS.prefix + "/secagg_to/"
            if isinstance(action, Publish) and action.topic.startswith(relay):
                device = TOPICS.device_of(action.topic)
                up(device, sessions[device].on_chunk(action.payload, unwrap=lambda b: b))
    [version] = made
    assert version.report.version == 1 and version.report.updates == 4
    row = h.store.model_history()[-1]
    assert row.devices == ("dev-0", "dev-1", "dev-2", "dev-4")
    assert row.secagg is not None
    assert row.secagg["dropped"] == 1 and row.secagg["contributors"] == 4
    assert h.store.count_updates() == 0  # never an unmasked input stored
