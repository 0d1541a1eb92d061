"""Faults on the device that must not end its process: a trainer that stops on its own,
a full or read-only disk under the outbox and the state files."""

from __future__ import annotations

import errno
import logging
import threading

import numpy as np
import pytest

from edge_client import outbox as outbox_module
from edge_client.client import ClientConfig, EdgeClient
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol import Task, TrainConfig, Update, decode
from edge_client.training import mlp_trainer
from tests.unit.session_driver import offer, offline_device


class BudgetTrainer:
    """A custom trainer with a batch budget: it reports stopped_early on its own."""

    def __init__(self, budget: int) -> None:
        self.inner = mlp_trainer([8, 6, 3], seed=1)
        self.budget = budget

    def get_weights(self):
        return self.inner.get_weights()

    def set_weights(self, weights) -> None:
        self.inner.set_weights(weights)

    def evaluate(self, x, y):
        return self.inner.evaluate(x, y)

    def fit(self, x, y, config, should_stop=None):
        calls = 0

        def stop() -> bool:
            nonlocal calls
            calls += 1
            return calls > self.budget or (should_stop is not None and should_stop())

        return self.inner.fit(x, y, config, should_stop=stop)


def _device(tmp_path, trainer=None) -> EdgeClient:
    return offline_device(tmp_path / "dev", trainer)


def _task(codec: dict | None = None) -> Task:
    return Task(task_id="r1", mode="sync", round=1, model_version=0,
                train=TrainConfig(epochs=2, batch_size=8), invited=("dev-0",), codec=codec)


def test_a_trainer_that_stops_on_its_own_sends_what_it_learned(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = _device(tmp_path, BudgetTrainer(budget=3))
    offer(client, _task())  # raised IndexError before
    [entry] = client.outbox.entries()
    update = decode(entry.payload, expect=Update)
    assert any(np.abs(v).sum() > 0 for v in update.tensors.values())
    assert "trainer stopped on its own after 3 batches" in caplog.text
    assert client.stats.stopped_mid_training == 0


def test_a_trainer_that_stops_before_its_first_batch_sends_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = _device(tmp_path, BudgetTrainer(budget=0))
    offer(client, _task())
    assert client.outbox.entries() == []
    assert not client.session.book.is_done("r1")  # tried again at the next check
    assert "stopped before its first batch" in caplog.text
    assert client.stats.skipped["stopped: trainer"] == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_keeps_the_device_running_and_loses_nothing(
        tmp_path, monkeypatch, caplog, code):
    client = _device(tmp_path)
    task = _task(codec=CodecConfig(sparsify="topk", fraction=0.1).to_wire())
    real_write = outbox_module.atomic_write

    def failing(path, data):
        raise OSError(code, "disk trouble", str(path))

    monkeypatch.setattr(outbox_module, "atomic_write", failing)
    offer(client, task)
    assert client.outbox.entries() == [] and not client.session.book.is_done("r1")
    assert "could not write the update to the outbox" in caplog.text
    feedback = client.session.maker.feedback
    assert feedback is None or not feedback.residual.any()  # rolled back

    monkeypatch.setattr(outbox_module, "atomic_write", real_write)  # space freed
    offer(client, task)  # the retained task, delivered again (or the next re-check)
    [entry] = client.outbox.entries()
    assert decode(entry.payload, expect=Update).task_id == "r1"
    assert client.session.book.is_done("r1")


def test_state_files_that_cannot_be_written_are_logged_and_the_update_kept(
        tmp_path, monkeypatch, caplog):
    client = _device(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client.disk, "save_done_tasks", full)
    monkeypatch.setattr(client.disk, "save_model", full)
    offer(client, _task())
    assert len(client.outbox.entries()) == 1 and client.session.book.is_done("r1")
    assert "could not save the task list" in caplog.text
    # A reboot finds the task done through the outbox, although the task list is stale.
    again = _device(tmp_path)
    assert again.session.book.is_done("r1")


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "x.update"

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module.os, "fsync", fsync_fails)
    with pytest.raises(OSError):
        outbox_module.atomic_write(target, b"data")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the device's own data
@pytest.mark.parametrize("x, y, message", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]),
     "x holds NaN or infinite values in 1 of 2 samples (first: sample 0)"),
    (np.array([[0.0, 1.0], [np.inf, 2.0]]), np.array([0, 1]), "first: sample 1"),
    (np.ones((2, 2)), np.array([0.0, 1.5]), "labels y must be whole numbers; y[1] is 1.5"),
    (np.ones((2, 2)), np.array([0, -1]), "labels y must be >= 0"),
    (np.ones((2, 2)), np.array([0, 1, 2]), "got x (2, 2), y (3,)"),
    (np.ones(3), np.array([0, 1, 2]), "need x of shape (samples, ...)"),
    (np.array([["a", "b"]]), np.array([0]), "must be numbers"),
])
def test_bad_local_data_is_refused_when_it_is_handed_over(tmp_path, x, y, message):
    with pytest.raises(ValueError) as refused:
        EdgeClient(ClientConfig(device_id="dev-0", state_dir=tmp_path / "dev"),
                   mlp_trainer([2, 3], seed=1), x, y)
    assert message in str(refused.value)
    client = _device(tmp_path)
    with pytest.raises(ValueError):
        client.set_data(x, y)


def test_whole_float_labels_are_taken_as_integers(tmp_path):
    client = _device(tmp_path)
    client.set_data(np.ones((3, 8), np.float64), np.array([0.0, 1.0, 2.0]))
    assert client.y.dtype == np.int64 and client.x.dtype == np.float32


def test_stopping_the_link_survives_paho_ending_its_thread_first():
    """Under load paho's network thread can end (and set its handle to None) between
    loop_stop's check and its join(): AttributeError escaped EdgeClient's shutdown."""
    import queue

    from edge_client.shared.transport import MqttLink

    link = MqttLink("c", "127.0.0.1", 1, queue.Queue())

    class Ended(threading.Thread):
        def join(self, timeout=None):  # what paho does once its thread set _thread = None
            raise AttributeError("'NoneType' object has no attribute 'join'")

    link._client._thread = Ended()
    link.stop(flush_timeout_s=0.01)  # returns instead of raising
