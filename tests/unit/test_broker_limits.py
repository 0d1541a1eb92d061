"""aggregator/broker_limits.py on fake /proc trees: the broker listening on our port is
found, its open-file limit read, and the line names it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aggregator.broker_limits import LimitHint, describe, find_local_broker, say_at_start

PORT = 1883
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  " \
             "timeout inode\n"


def _proc(tmp_path: Path, limit: str = "1024", open_fds: int = 3,
          listening: bool = True) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    inode = "4242"
    row = (f"   0: 0100007F:{PORT:04X} 00000000:0000 {'0A' if listening else '01'} "
           f"00000000:00000000 00:00000000 00000000   100        0 {inode} 1\n")
    (proc / "net" / "tcp").write_text(TCP_HEADER + row)
    (proc / "net" / "tcp6").write_text(TCP_HEADER)
    for pid, comm in ((77, "mosquitto"), (78, "mosquitto"), (90, "bash")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "limits").write_text(
            "Limit                     Soft Limit           Hard Limit           Units\n"
            f"Max open files            {limit}                 524288               files\n")
    for i in range(open_fds):
        os.symlink(f"socket:[{inode if i == 0 else 1000 + i}]", proc / "77" / "fd" / str(i))
    return proc


def test_the_broker_on_our_port_is_found_and_its_limit_read(tmp_path):
    broker = find_local_broker("127.0.0.1", PORT, _proc(tmp_path, open_fds=5))
    assert broker is not None and (broker.pid, broker.max_files, broker.open_files) == (
        77, 1024, 5)
    tight, line = describe(broker, devices=3000)
    assert tight and "mosquitto (pid 77) may keep 1024 files open, 5 open now" in line
    assert "(3000 devices known); raise its LimitNOFILE" in line and "--fleet N" in line
    assert describe(broker, devices=10) == (False, "mosquitto (pid 77) may keep 1024 files "
                                                   "open, 5 open now: about 1000 clients at most")


def test_a_broker_at_its_limit_says_so(tmp_path):
    broker = find_local_broker("localhost", PORT, _proc(tmp_path, limit="12", open_fds=12))
    assert broker is not None and broker.full
    assert "it is at that limit" in describe(broker, 0)[1]


def test_a_remote_or_missing_broker_gets_the_general_hint(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert find_local_broker("10.0.0.5", PORT, _proc(tmp_path)) is None
    assert find_local_broker("127.0.0.1", PORT, tmp_path / "nothing") is None
    say_at_start("10.0.0.5", PORT, 5, tmp_path / "nothing")
    [record] = caplog.records
    assert record.levelname == "INFO" and "LimitNOFILE" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_the_start_line_warns_when_the_fleet_outgrows_the_limit(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    proc = _proc(tmp_path)
    say_at_start("127.0.0.1", PORT, 5000, proc)
    say_at_start("127.0.0.1", PORT, 10, proc)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_the_waiting_hint_is_read_again_only_now_and_then(tmp_path):
    proc = _proc(tmp_path, limit="unlimited")
    hint = LimitHint("127.0.0.1", PORT, lambda: 10, proc)
    assert hint() == "mosquitto (pid 77) has no open-file limit"
    (proc / "77" / "limits").write_text("Max open files 64 64 files\n")
    assert hint() == "mosquitto (pid 77) has no open-file limit"  # cached
