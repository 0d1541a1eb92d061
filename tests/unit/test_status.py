"""`fedge status` from a store built by hand: what it reads and how it prints it."""

from __future__ import annotations

import json

from aggregator.status import FINISHED_NOTE, fleet_status
from aggregator.store import Store
from aggregator.web import create_app
from edge_client.shared.protocol import Status, Task, TrainConfig, encode
from fedge.cli import main
from fedge.status_cli import render


def _store(tmp_path) -> Store:
    store = Store(tmp_path / "agg.sqlite3")
    store.add_model(0, b"m0", "00", {"round": 0})
    store.add_model(1, b"m1", "11", {"round": 1, "accuracy": 0.91})
    task = Task(task_id="r2", mode="sync", round=2, model_version=1, train=TrainConfig(),
                invited=("a", "b", "c"), deadline=4_000_000_000.0)
    store.add_task(task, encode(task))
    store.set_device(Status("a", online=True, eligible=True, model_version=1))
    store.set_device(Status("b", online=True, eligible=False,
                            reason="cpu busy 55% > 30%; battery 10% < 20%", model_version=1))
    store.set_device(Status("c", online=True, eligible=False, reason="cpu busy 80% > 30%"))
    store.set_device(Status("d", online=False, eligible=True))
    store.add_rejection("x", "n1", "bad signature")
    return store


def test_the_status_counts_devices_by_their_first_reason(tmp_path):
    store = _store(tmp_path)
    s = fleet_status(store)
    assert (s.model_version, s.versions, s.accuracy) == (1, 1, 0.91)
    assert s.round is not None and (s.round.round, s.round.invited, s.round.updates) == (2, 3, 0)
    assert s.not_eligible == {"cpu busy": 2}
    assert [r.reason for r in s.recent_rejections] == ["bad signature"]
    assert not s.finished
    text = render(s, tmp_path / "agg.sqlite3")
    assert "version 1 (1 made, accuracy 0.9100" in text
    assert "round       2 (sync, from version 1): 0 updates of 3 invited" in text
    assert "4 known, 3 online, 1 eligible; not eligible: 2 cpu busy" in text
    assert "not eligible: cpu busy 55% > 30%; battery 10% < 20%" in text
    assert "x: bad signature" in text
    store.set_note(FINISHED_NOTE, True)
    assert fleet_status(store).finished


def test_the_command_prints_json_and_refuses_what_it_cannot_read(tmp_path, capsys):
    _store(tmp_path).close()
    assert main(["status", "--db", str(tmp_path / "agg.sqlite3"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["round"]["task_id"] == "r2" and len(out["devices"]) == 4
    assert main(["status", "--db", str(tmp_path / "missing.sqlite3")]) == 2
    assert "no aggregator store at" in capsys.readouterr().err
    (tmp_path / "junk.sqlite3").write_text("not sqlite")
    assert main(["status", "--db", str(tmp_path / "junk.sqlite3")]) == 2
    assert "cannot read the store" in capsys.readouterr().err
    assert main(["status", "--db", str(tmp_path / "agg.sqlite3"), "--watch", "0"]) == 2


def test_device_rows_are_capped_idle_devices_first_and_the_rest_counted(tmp_path, capsys):
    s = fleet_status(_store(tmp_path))  # a eligible; b, c not eligible; d offline
    rows = [line.split()[0] for line in render(s, "here", 2).splitlines()
            if line.startswith("  ") and line.split()[0] in {"a", "b", "c", "d"}]
    assert rows == ["b", "c"]  # idle first, by id
    text = render(s, "here", 2)
    assert "  ... and 2 more (--devices all lists every one)" in text
    assert "4 known, 3 online, 1 eligible" in text  # the counts cover every device
    assert "more (--devices" not in render(s, "here")  # None: every device
    db = str(tmp_path / "agg.sqlite3")
    assert main(["status", "--db", db, "--devices", "all"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {d} " in out for d in "abcd") and "more (--devices" not in out
    assert main(["status", "--db", db, "--devices", "1"]) == 0
    assert "... and 3 more" in capsys.readouterr().out
    for bad in ("-1", "two", "1.5", ""):
        assert main(["status", "--db", db, "--devices", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fedge status: --devices must be") and err.count("\n") == 1


def test_health_says_what_is_wrong(tmp_path):
    from aggregator.status import BROKER_NOTE, HEARTBEAT_NOTE, service_health

    store = _store(tmp_path)
    now = 1_000_000.0
    assert service_health(store, now).problem == "the service loop has not run yet"
    store.set_note(HEARTBEAT_NOTE, now - 5)
    store.set_note(BROKER_NOTE, {"connected": False, "since": now, "reason": "refused"})
    found = service_health(store, now)
    assert not found.ok and found.problem == "not connected to the broker (refused)"
    store.set_note(BROKER_NOTE, {"connected": True, "since": now, "reason": ""})
    found = service_health(store, now)
    assert found.ok and found.problem is None and found.model_version == 1
    assert service_health(store, now + 60).problem == "the service loop last ran 65 s ago"
    client = create_app(tmp_path / "agg.sqlite3", "read-token", None).test_client()
    answer = client.get("/api/health")  # no token needed
    assert answer.status_code == 503 and answer.get_json()["ok"] is False
    assert client.get("/api/status").status_code == 401
    status = client.get("/api/status", headers={"Authorization": "Bearer read-token"})
    assert status.get_json()["round"]["task_id"] == "r2"


def test_twin_watch_tells_two_clients_from_a_restart(caplog):
    from aggregator.narrator import TwinWatch

    now = [0.0]
    watch = TwinWatch(clock=lambda: now[0])

    def seen(session: str) -> None:
        now[0] += 1.0
        watch.status(Status("pi", online=True, session=session))

    for session in ("a", "b", "b", "b"):  # a restart: a new session that stays
        seen(session)
    assert "two clients" not in caplog.text
    for session in ("a", "b", "a"):  # taking turns
        seen(session)
    assert "two clients are using device id 'pi' (sessions" in caplog.text
