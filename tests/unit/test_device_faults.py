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
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol import Task, TrainConfig, Update, decode
from edge_client.training import mlp_trainer


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
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 3, 40)
    client = EdgeClient(ClientConfig(device_id="dev-0", state_dir=tmp_path / "dev",
                                     eligibility=EligibilityConfig(enabled=False)),
                        trainer or mlp_trainer([8, 6, 3], seed=1), x, y)
    client._set_global(0, mlp_trainer([8, 6, 3], seed=0).get_weights(), {})
    return client


def _task(codec: dict | None = None) -> Task:
    return Task(task_id="r1", mode="sync", round=1, model_version=0,
                train=TrainConfig(epochs=2, batch_size=8), invited=("dev-0",), codec=codec)


def test_a_trainer_that_stops_on_its_own_sends_what_it_learned(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = _device(tmp_path, BudgetTrainer(budget=3))
    client._task = _task()
    client._maybe_train()  # raised IndexError before
    [entry] = client.outbox.entries()
    update = decode(entry.payload, expect=Update)
    assert any(np.abs(v).sum() > 0 for v in update.tensors.values())
    assert "trainer stopped on its own after 3 batches" in caplog.text
    assert client.stats.stopped_mid_training == 0


def test_a_trainer_that_stops_before_its_first_batch_sends_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = _device(tmp_path, BudgetTrainer(budget=0))
    client._task = _task()
    client._maybe_train()
    assert client.outbox.entries() == []
    assert "r1" not in client._done_tasks  # tried again at the next check
    assert "stopped before its first batch" in caplog.text
    assert client.stats.skipped["stopped: trainer"] == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_keeps_the_device_running_and_loses_nothing(
        tmp_path, monkeypatch, caplog, code):
    client = _device(tmp_path)
    client._task = _task(codec=CodecConfig(sparsify="topk", fraction=0.1).to_wire())
    real_write = outbox_module.atomic_write

    def failing(path, data):
        raise OSError(code, "disk trouble", str(path))

    monkeypatch.setattr(outbox_module, "atomic_write", failing)
    client._maybe_train()
    assert client.outbox.entries() == [] and "r1" not in client._done_tasks
    assert "could not write the update to the outbox" in caplog.text
    assert client._feedback is None or not client._feedback.residual.any()  # rolled back

    monkeypatch.setattr(outbox_module, "atomic_write", real_write)  # space freed
    client._maybe_train()
    [entry] = client.outbox.entries()
    assert decode(entry.payload, expect=Update).task_id == "r1"
    assert "r1" in client._done_tasks


def test_state_files_that_cannot_be_written_are_logged_and_the_update_kept(
        tmp_path, monkeypatch, caplog):
    client = _device(tmp_path)
    client._task = _task()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client.disk, "save_done_tasks", full)
    monkeypatch.setattr(client.disk, "save_model", full)
    client._maybe_train()
    assert len(client.outbox.entries()) == 1 and "r1" in client._done_tasks
    assert "could not save the task list" in caplog.text
    # A reboot finds the task done through the outbox, although the task list is stale.
    again = _device(tmp_path)
    assert "r1" in again._done_tasks


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
