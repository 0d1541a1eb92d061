"""`fedge bridge` hands the MCU's new samples to the edge client while it federates."""

from __future__ import annotations

import threading

import numpy as np

from edge_client.training import mlp_trainer
from fedge.bridge_cli import _refresh_data
from fedge.roles import check_data_fits


class _Dataset:
    def __init__(self, y: np.ndarray) -> None:
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def arrays(self, scale: float = 1.0):
        return np.ones((len(self.y), 4), np.float32) * scale, self.y


class _Bridge:
    def __init__(self, y: np.ndarray | None = None) -> None:
        self.dataset = _Dataset(np.array([0, 1], np.int64) if y is None else y)


class _Client:
    def __init__(self) -> None:
        self.given: list[int] = []
        self.got_new = threading.Event()

    def set_data(self, x, y) -> None:
        self.given.append(len(y))
        self.got_new.set()


def test_new_samples_reach_the_client_and_unchanged_data_does_not():
    bridge, client, stop = _Bridge(), _Client(), threading.Event()
    thread = threading.Thread(target=_refresh_data, args=(client, bridge, 2, 0.5, stop, 0.01))
    thread.start()
    try:
        assert not client.got_new.wait(0.1)  # nothing new yet: no call
        bridge.dataset.y = np.array([0, 1, 2, 3, 1], np.int64)
        assert client.got_new.wait(5)
    finally:
        stop.set()
        thread.join(5)
    assert client.given == [5]


def test_samples_that_came_before_the_thread_ran_are_new_too():
    bridge, client, stop = _Bridge(), _Client(), threading.Event()
    bridge.dataset.y = np.array([0, 1, 2], np.int64)  # after the client got 2 samples
    thread = threading.Thread(target=_refresh_data, args=(client, bridge, 2, 0.5, stop, 0.01))
    thread.start()
    try:
        assert client.got_new.wait(5)
    finally:
        stop.set()
        thread.join(5)
    assert client.given == [3]


def test_bridge_keeps_the_data_that_fits_when_new_mcu_samples_do_not():
    checker = mlp_trainer([4, 8, 3])
    bridge, client, stop = _Bridge(np.array([0, 1], np.int64)), _Client(), threading.Event()

    def fits(x, y) -> None:
        check_data_fits(checker, x, y, "the MCU's samples")
    thread = threading.Thread(target=_refresh_data,
                              args=(client, bridge, 2, 1.0, stop, 0.01, fits))
    thread.start()
    try:
        bridge.dataset.y = np.array([0, 1, 7], np.int64)  # a label the model has no class for
        assert not client.got_new.wait(0.3)
        bridge.dataset.y = np.array([0, 1, 2, 2], np.int64)
        assert client.got_new.wait(10)
    finally:
        stop.set()
        thread.join(10)
    assert client.given == [4]


def test_a_bridge_loop_that_dies_stops_the_command_and_is_reported():
    from fedge.bridge_cli import _serve

    class Broken:
        def run(self, stop):
            raise RuntimeError("port exploded")

    stop, failures = threading.Event(), []
    _serve(Broken(), stop, failures)
    assert stop.is_set()  # run_bridge's stop.wait() returns instead of hanging
    assert [str(f) for f in failures] == ["port exploded"]
