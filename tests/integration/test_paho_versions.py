"""A device on paho-mqtt 1.6.1 (Debian bookworm's, the armhf route) and one on paho 2.x
in one federation, through a real mosquitto, with the aggregator on paho 2.x in this process.

paho 1.6.1 is pip-installed once per session into a folder put first on the device
subprocess's PYTHONPATH, so `fedge device` runs this repo's code on the old paho while
everything else comes from this venv. Skipped only when pip cannot reach the index.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import paho.mqtt
import pytest

from aggregator.config import SyncConfig
from tests.integration.fleet import Digits, Running, make_aggregator, make_client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OLD_PAHO = "1.6.1"
NETWORK_TROUBLE = ("NewConnectionError", "Network is unreachable", "Temporary failure in name",
                   "Max retries exceeded", "ConnectTimeout", "ReadTimeout",
                   "Could not find a version that satisfies")


@pytest.fixture(scope="session")
def old_paho(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only paho-mqtt 1.6.1 (an sdist: pip builds it), once per session."""
    target = tmp_path_factory.mktemp("paho-1.6.1")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--target", str(target), f"paho-mqtt=={OLD_PAHO}"],
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        if any(text in done.stderr for text in NETWORK_TROUBLE):
            pytest.skip(f"pip cannot fetch paho-mqtt=={OLD_PAHO} from the package index: "
                        f"{done.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install paho-mqtt=={OLD_PAHO} failed:\n{done.stderr[-2000:]}")
    return target


def _env(old_paho: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(old_paho), str(REPO)])}


def test_device_on_paho_1_6_trains_with_an_aggregator_on_paho_2(mosquitto, tmp_path,
                                                                 old_paho):
    assert int(paho.mqtt.__version__.split(".")[0]) == 2  # this process: the aggregator
    seen = subprocess.run([sys.executable, "-c", "import paho.mqtt,"
                           " edge_client.shared.paho_compat as c;"
                           " print(paho.mqtt.__version__, c.PAHO_MAJOR)"],
                          capture_output=True, text=True, env=_env(old_paho), timeout=60)
    assert seen.stdout.split() == [OLD_PAHO, "1"], seen.stderr

    data = Digits(devices=2)
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=2,
                          sync=SyncConfig(target_updates=2, min_fraction=1.0,
                                          round_timeout_s=60))
    new = make_client(mosquitto, tmp_path, data, 0)  # paho 2.x, in this process
    x, y = data.shards[1]
    np.savez(tmp_path / "dev1.npz", x=x, y=y)
    toml = tmp_path / "dev1.toml"
    toml.write_text(f'device_id = "dev-1"\nfederation = "test"\nhost = "{mosquitto.host}"\n'
                    f'port = {mosquitto.port}\nstate_dir = "{tmp_path / "dev-1"}"\n'
                    f'[model]\nsizes = {data.sizes}\n[data]\npath = "{tmp_path / "dev1.npz"}"\n'
                    '[eligibility]\nenabled = false\n')
    runs = [Running(agg.run, "aggregator"), Running(new.run, "dev-0")]
    old = subprocess.Popen([sys.executable, "-m", "fedge.cli", "device", "--config", str(toml)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(old_paho), cwd=REPO)
    try:
        _, log = old.communicate(timeout=90)
    finally:
        if old.poll() is None:  # only ours, and only if the timeout left it running
            old.kill()
            old.communicate()
        for run in runs:
            run.halt(30) if old.returncode != 0 else run.join(30)

    assert old.returncode == 0, log[-3000:]
    assert log.count("accepted by the aggregator") == 2, log[-3000:]
    assert "model version 2 installed" in log, log[-3000:]
    assert agg.version == 2
    assert [h.updates for h in agg.history[1:]] == [2, 2]
    with sqlite3.connect(agg.config.db_path) as db:
        used = sorted(db.execute("SELECT used_in FROM updates WHERE device_id = 'dev-1' "
                                 "AND state = 'aggregated'"))
    assert used == [(1,), (2,)]  # the paho 1.6 device's update is in both versions
    assert new.stats.acks["accepted"] == 2
