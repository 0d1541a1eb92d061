"""A device whose state folder is full: a real tmpfs of 1 MiB, filled to the last byte,
under a real EdgeClient beside a real aggregator and mosquitto. The device must log the
fault, keep running and, once space is freed, send its update and finish."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import pytest

from aggregator.config import SyncConfig
from tests.integration.fleet import Digits, make_aggregator, make_client, start_all, wait_until

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # until ENOSPC
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_state_folder_is_logged_and_survived(mosquitto, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = Digits(1)
    with _tmpfs(tmp_path / "small-disk", "1m") as disk:
        aggregator = make_aggregator(mosquitto, tmp_path, data, rounds=2,
                                     sync=SyncConfig(target_updates=1, round_timeout_s=60))
        device = make_client(mosquitto, disk, data, 0, eligibility_check_s=0.2)
        filler = _fill(disk)
        running = start_all(aggregator, [device])
        try:
            wait_until(lambda: "could not write the update to the outbox" in caplog.text, 30,
                       "the device to hit the full disk")
            assert aggregator.version == 0 and all(r.thread.is_alive() for r in running)
            filler.unlink()  # the user frees space: the next check trains and sends
            for run in running:
                run.join(60)
        finally:
            for run in running:
                run.halt()
        assert aggregator.version == 2
        assert device.stats.acks["accepted"] == 2 and len(device.outbox) == 0
    assert "No space left on device" in caplog.text
