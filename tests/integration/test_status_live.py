"""`fedge status` beside a live federation over real mosquitto: the round, the devices
and why one of them is not training, then the finished run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aggregator.config import SyncConfig
from edge_client.client import EdgeClient
from edge_client.eligibility import EligibilityPolicy
from edge_client.eligibility.idle import CpuIdleProbe
from edge_client.training import mlp_trainer
from tests.integration.fleet import (
    Digits,
    Running,
    make_aggregator,
    make_client,
    wait_until,
)

pytestmark = pytest.mark.integration


def _status(db, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedge.cli", "status", "--db", str(db),
                           *flags], capture_output=True, text=True, timeout=60, check=True)


def test_status_shows_the_round_and_why_a_device_is_idle(mosquitto, tmp_path):
    data = Digits(3)
    aggregator = make_aggregator(mosquitto, tmp_path, data, rounds=3,
                                 sync=SyncConfig(target_updates=2, round_timeout_s=30))
    clients = [make_client(mosquitto, tmp_path, data, i) for i in range(2)]
    busy = make_client(mosquitto, tmp_path, data, 2, exit_when_done=False)
    # The third device's app is always busy: online, never eligible, and says why.
    busy = EdgeClient(busy.config, mlp_trainer(data.sizes, seed=2), *data.shards[2],
                      policy=EligibilityPolicy([CpuIdleProbe(app_busy=lambda: True)],
                                               hold_s=0))
    # The gateway serves on after its last round, as `fedge aggregator serve` does.
    running = [Running(lambda stop: aggregator.run(stop, exit_when_done=False), "aggregator")]
    running += [Running(c.run, c.config.device_id) for c in [*clients, busy]]
    db = aggregator.config.db_path
    try:
        for device in running[1:3]:
            device.join(60)  # they leave when told the federation is done
        wait_until(lambda: "1 online" in _status(db).stdout, 30, "the two devices offline")
        text = _status(db).stdout
        after = json.loads(_status(db, "--json").stdout)
    finally:
        for r in running:
            r.halt()
    assert "version 3 (3 made" in text and "training    finished" in text
    assert "3 known, 1 online, 0 eligible; not eligible: 1 app busy" in text
    assert "dev-0                    v3  offline" in text
    assert after["model_version"] == 3 and after["finished"] is True
    assert after["not_eligible"] == {"app busy": 1}
    [idle] = [d for d in after["devices"] if d["device_id"] == "dev-2"]
    assert (idle["online"], idle["eligible"], idle["reason"]) == (True, False, "app busy")


def test_status_over_the_api_and_health_for_probes(mosquitto, tmp_path):
    """`fedge aggregator serve` with its dashboard: `fedge status --url` reads the REST
    API, /api/health answers 200 while the service holds its broker link and 503 with
    the reason once the broker is gone."""
    import urllib.error
    import urllib.request

    from fedge.broker import free_port
    from tests.integration.fedge_process import LoggedFedge

    port = free_port()
    (tmp_path / "read.token").write_text("read-secret\n")
    config = tmp_path / "aggregator.toml"
    config.write_text(f'federation = "api"\nport = {mosquitto.port}\nrounds = 0\n'
                      f'db_path = "{tmp_path / "agg.sqlite3"}"\n[model]\nsizes = [64, 16, 10]\n'
                      f'[dashboard]\nenabled = true\nport = {port}\n'
                      f'read_token_file = "{tmp_path / "read.token"}"\n')
    serve = LoggedFedge("aggregator", "serve", "--config", str(config))
    url = f"http://127.0.0.1:{port}"

    def health() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=5) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)
        except OSError:
            return 0, {}

    try:
        serve.wait_for("connected to the broker", 30)
        wait_until(lambda: health()[0] == 200, 30, "a healthy gateway")
        shown = subprocess.run([sys.executable, "-m", "fedge.cli", "status", "--url", url,
                                "--token-file", str(tmp_path / "read.token")],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"from        {url}/api/status" in shown.stdout
        assert "model       version 0" in shown.stdout and "broker      connected" in shown.stdout
        refused = subprocess.run([sys.executable, "-m", "fedge.cli", "status", "--url", url],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "answered 401" in refused.stderr
        mosquitto.stop()
        wait_until(lambda: health()[0] == 503, 30, "the gateway to report its broker gone")
        assert "not connected to the broker" in health()[1]["problem"]
        serve.wait_for("waiting for the broker: not connected to", 30)
    finally:
        assert serve.stop() == 0
    assert "Traceback" not in serve.text
