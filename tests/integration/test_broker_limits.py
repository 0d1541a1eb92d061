"""A broker at its open-file limit (mosquitto's stock 1,024 stops near 1,000 clients)
locked the aggregator out with nothing but "disconnected (Unspecified error)" in its log.
Here a real mosquitto runs under a tiny file limit; clients fill it, then
`fedge aggregator serve` must say what is going on."""

from __future__ import annotations

import queue
import shutil
import subprocess
import time

import pytest

from edge_client.shared.transport import MqttLink
from fedge.broker import find_mosquitto, free_port
from tests.integration.fedge_process import LoggedFedge

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_a_broker_out_of_file_descriptors_is_named_in_the_log(tmp_path):
    mosquitto = find_mosquitto()
    assert mosquitto is not None, "apt-get install mosquitto"
    port = free_port()
    (tmp_path / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                                     f"log_dest stderr\n")
    broker = subprocess.Popen(["prlimit", "--nofile=12", mosquitto, "-c",
                               str(tmp_path / "m.conf")], stderr=subprocess.DEVNULL)
    links: list[MqttLink] = []
    serve = None
    try:
        time.sleep(0.5)
        for i in range(8):  # more than the broker can hold open
            link = MqttLink(f"filler-{i}", "127.0.0.1", port, queue.Queue(), keepalive_s=5)
            link.start()
            links.append(link)
        deadline = time.monotonic() + 20
        while sum(link.connected for link in links) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        (tmp_path / "aggregator.toml").write_text(
            f'port = {port}\ndb_path = "{tmp_path / "agg.sqlite3"}"\n'
            f'[model]\nsizes = [8, 4, 3]\n')
        serve = LoggedFedge("aggregator", "serve", "--config", str(tmp_path / "aggregator.toml"))
        start = serve.wait_for("broker limits:", 30)  # read from the broker's /proc entry
        assert f"mosquitto (pid {broker.pid}) may keep 12 files open" in start
        assert "raise its LimitNOFILE" in start and "WARNING" in start
        line = serve.wait_for("closed the connection before accepting it", 30)
        assert "open-file limit" in line and "max_connections" in line
        waiting = serve.wait_for("waiting for the broker: not connected to 127.0.0.1", 30)
        assert "may keep 12 files open" in waiting and "it is at that limit" in waiting
        assert "--fleet N" in waiting
    finally:
        if serve is not None:
            serve.stop()
        for link in links:
            link.stop(0.1)
        broker.terminate()
        broker.wait(10)
