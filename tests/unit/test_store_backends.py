"""The store's API, the same on SQLite and on PostgreSQL (`make_store`, tests/conftest.py:
every test here runs once per backend, PostgreSQL in a database of its own); and the
one-line errors of `db_url`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from aggregator.config import load_aggregator_config
from aggregator.secagg.store import SecAggLog
from aggregator.states import TaskState, UpdateState
from aggregator.store import Store
from aggregator.store_db import StoreUnreachable, describe
from aggregator.store_group import GroupLost
from aggregator.web.readmodel import last_local_accuracy, secure_contributions
from edge_client.shared.protocol import Status, Task, TrainConfig, Update, encode
from edge_client.shared.settings import ConfigError
from fedge.cli import main
from tests.pg_server import free_port

BLOB = bytes(range(256)) * 4  # every byte value: BLOB and BYTEA keep them all


def _task(task_id: str = "t0", version: int = 0, members: tuple[str, ...] | None = None
          ) -> Task:
    return Task(task_id=task_id, mode="sync", round=version, model_version=version,
                train=TrainConfig(epochs=1), members=members)


def _update(device: str, task_id: str = "t0", samples: int = 10, **metrics) -> Update:
    return Update(device_id=device, task_id=task_id, nonce=f"{device}-{task_id}",
                  base_version=0, num_samples=samples,
                  tensors={"w": np.full(3, 0.5, np.float32)},
                  metrics={"train_s": 0.5, **metrics})


def _store_update(store: Store, device: str, task_id: str = "t0", **metrics) -> bool:
    u = _update(device, task_id, **metrics)
    return store.add_update(u, encode(u), UpdateState.PENDING)


# ---------------------------------------------------------------- models
def test_models_deltas_and_residuals_round_trip(make_store):
    store = make_store()
    assert store.latest_model() is None and store.model_history() == []
    store.add_model(0, BLOB, "sha0", {"round": 0})
    store.add_task(_task(), encode(_task()))
    _store_update(store, "dev-0")
    used = [_update("dev-0")]
    store.add_model(1, BLOB[::-1], "sha1", {"round": 1, "metrics": {"accuracy": 0.5}},
                    used=used, close_task="t0", delta=b"\x00delta", residual=b"\x01res")
    latest = store.latest_model()
    assert latest is not None and latest.version == 1 and latest.blob == BLOB[::-1]
    assert isinstance(latest.blob, bytes) and latest.sha256 == "sha1"
    assert latest.info["metrics"] == {"accuracy": 0.5}
    assert store.model_delta(1) == b"\x00delta" and store.model_delta(0) is None
    assert store.downlink_residual(1) == b"\x01res" and store.downlink_residual(0) is None
    assert store.model_sha256(0) == "sha0" and store.model_size(1) == len(BLOB)
    assert [h.version for h in store.model_history()] == [0, 1]
    assert store.count_updates(UpdateState.AGGREGATED) == 1
    assert store.task_state("t0")[2] is TaskState.CLOSED
    [row] = store.audit(1)
    assert row["device_id"] == "dev-0" and row["used_in"] == 1 and row["num_samples"] == 10


def test_a_failed_version_leaves_nothing_behind(make_store):
    store = make_store()
    store.add_model(0, BLOB, "sha0", {})
    with pytest.raises(store.db.errors):
        store.add_model(0, BLOB, "again", {})  # the version exists: the whole commit fails
    assert store.model_sha256(0) == "sha0" and [h.version for h in store.model_history()] == [0]
    assert not store.db.in_transaction


# ---------------------------------------------------------------- tasks
def test_tasks_open_close_abort_and_keep_their_members(make_store):
    store = make_store()
    store.add_task(_task("t0"), encode(_task("t0")))
    store.add_task(_task("t1", members=("dev-0", "dev-1")), encode(_task("t1")))
    assert store.task_state("t0")[2] is TaskState.CLOSED  # a new task closes the open one
    mode, version, state, task = store.task_state("t1")
    assert (mode, version, state) == ("sync", 0, TaskState.OPEN)
    assert task.members == ("dev-0", "dev-1")
    opened = store.open_task()
    assert opened is not None and opened[0].task_id == "t1"
    store.reissue_task(_task("t1", members=("dev-2",)), encode(_task("t1")))
    assert store.task_state("t1")[3].members == ("dev-2",)  # replaced, not duplicated
    _store_update(store, "dev-2", "t1")
    store.abort_task("t1")
    assert store.task_state("t1")[2] is TaskState.ABORTED and store.open_task() is None
    assert store.count_updates(UpdateState.DISCARDED) == 1
    assert store.task_state("never") is None


# ---------------------------------------------------------------- updates
def test_updates_are_stored_once_and_read_in_arrival_order(make_store):
    store = make_store()
    store.add_task(_task(), encode(_task()))
    for device in ("dev-2", "dev-0", "dev-1"):
        assert _store_update(store, device)
    assert not _store_update(store, "dev-0")  # a second one for the same task
    assert store.has_update("dev-0", "t0") and not store.has_update("dev-9", "t0")
    payloads = list(store.iter_pending_payloads())
    assert payloads == store.pending_payloads() and len(payloads) == 3
    assert all(isinstance(p, bytes) for p in payloads)
    assert [k[0] for k in store.update_keys()] == ["dev-2", "dev-0", "dev-1"]
    assert store.count_updates() == 3 and store.count_updates("pending") == 3
    assert sorted(store.proven_devices()) == ["dev-0", "dev-1", "dev-2"]


def test_pending_payloads_stream_while_the_store_is_written(make_store):
    """More rows than one fetch of PostgreSQL's server-side cursor, with writes between."""
    store = make_store()
    store.add_task(_task(), encode(_task()))
    devices = [f"dev-{i:02d}" for i in range(20)]
    for device in devices:
        _store_update(store, device)
    seen = []
    for payload in store.iter_pending_payloads():
        seen.append(payload)
        store.count("folded")  # the loop writes while it reads
    assert seen == store.pending_payloads() and store.counter("folded") == 20


def test_what_is_committed_survives_a_reopen(make_store):
    store = make_store()
    store.add_task(_task(), encode(_task()))
    _store_update(store, "dev-0")
    store.count("updates", 3)
    store.close()
    again = make_store()
    assert again.count_updates() == 1 and again.counter("updates") == 3
    assert again.open_task() is not None


# ---------------------------------------------------------------- devices
def test_enrolment_revocation_and_device_statuses(make_store):
    store = make_store()
    store.enroll("dev-0", "ed25519:AAAA")
    store.enroll("dev-0", "ed25519:BBBB")  # enrolling again replaces the key
    assert store.device_key("dev-0") == "ed25519:BBBB"
    assert store.revoke("dev-0") and not store.revoke("nobody")
    assert store.device_key("dev-0") is None and store.enrolment()[0]["revoked_at"]
    store.enroll("dev-0", "ed25519:CCCC")  # lifts the revocation
    assert store.device_key("dev-0") == "ed25519:CCCC"
    seen = [(Status(device_id=d, online=True, model_version=1, battery_pct=50.0), 1.0)
            for d in ("dev-0", "dev-1")]
    store.set_devices(seen)
    store.set_device(Status(device_id="dev-1", online=False, reason="charging"))
    rows = {d["device_id"]: d for d in store.devices()}
    assert rows["dev-0"]["online"] == 1 and rows["dev-0"]["battery_pct"] == 50.0
    assert rows["dev-1"]["online"] == 0 and rows["dev-1"]["reason"] == "charging"
    store.add_task(_task(), encode(_task()))
    _store_update(store, "dev-0")
    assert store.forget_unproven_devices() == 1
    assert [d["device_id"] for d in store.devices()] == ["dev-0"]


# ---------------------------------------------------------------- rejections, flags
def test_rejections_clipping_and_device_outcomes(make_store):
    store = make_store()
    store.keep_rejections(per_device=2, total=100)
    for i in range(4):
        store.add_rejection("evil", f"n{i}", f"bad signature {i}")
    store.add_rejection("dev-0", "n", "too late")
    assert store.count_rejections("evil") == 2 and store.count_rejections() == 3
    assert {r[1] for r in store.rejections() if r[0] == "evil"} == {"n2", "n3"}
    store.add_task(_task(), encode(_task()))
    _store_update(store, "dev-0")
    store.add_model(0, BLOB, "s", {}, used=[_update("dev-0")])
    store.add_clipping(0, {"dev-0": 9.0}, bound=1.0, median=1.0)
    outcomes = {o["device_id"]: o for o in store.device_outcomes(window=10, clip_factor=3.0)}
    assert outcomes["evil"]["rejected"] == 2 and outcomes["evil"]["recent"] == 2
    assert outcomes["evil"]["last_rejection"] == "bad signature 3"
    assert outcomes["dev-0"]["clipped"] == 1 and outcomes["dev-0"]["clipped_total"] == 1
    assert outcomes["dev-0"]["rejected"] == 1 and outcomes["dev-0"]["recent"] == 2
    [one] = store.device_outcomes(window=1, clip_factor=3.0, device_id="evil")
    assert one["recent"] == 1 and one["rejected"] == 1


def test_counters_and_notes(make_store):
    store = make_store()
    store.count("x")
    store.count("x", 41)
    assert store.counter("x") == 42 and store.counter("never") == 0
    store.set_note("k", {"a": [1, 2.5, "three"]})
    store.set_note("k", {"b": None})
    assert store.note("k") == {"b": None}
    store.set_note("k", None)
    assert store.note("k") is None


# ---------------------------------------------------------------- group commit
def test_an_ack_follows_the_commit_of_its_batch(make_store):
    """What another connection (a restart, the dashboard) sees: nothing of the batch
    while it is open, all of it once `group()` returned, which is when acks go out."""
    store, reader = make_store(), make_store()
    store.add_task(_task(), encode(_task()))
    with store.group():
        _store_update(store, "dev-0")
        store.add_rejection("evil", "n", "junk")
        assert reader.count_updates() == 0 and reader.count_rejections() == 0
    assert reader.count_updates() == 1 and reader.count_rejections() == 1
    assert store.commits == 1


def test_a_group_of_soft_writes_needs_no_durable_commit(make_store):
    store = make_store()
    with store.group():
        store.add_rejection("evil", "n", "junk")
        store.set_device(Status(device_id="dev-0", online=True))
        assert not store.group_durable()
    assert store.commits == 0 and store.count_rejections() == 1 and store.devices()


def test_a_statement_failing_in_a_group_loses_the_whole_group(make_store):
    store = make_store()
    store.add_model(0, BLOB, "s", {})
    with pytest.raises((GroupLost, *store.db.errors)), store.group():
        store.count("x")
        store.db.execute("INSERT INTO models VALUES (0, 0, 's', ?, '{}', NULL)", (b"",))
    assert store.counter("x") == 0 and not store.db.in_transaction
    with store.group():
        store.count("x")
    assert store.counter("x") == 1


# ---------------------------------------------------------------- secagg, web reads
def test_secure_rounds_and_the_dashboards_reads(make_store):
    store = make_store()
    log = SecAggLog(store.db)
    log.opened("s1", ("dev-0", "dev-1"), 16, 4, "advertise_keys")
    log.opened("s1", ("dev-0", "dev-1"), 16, 4, "advertise_keys")  # again: replaced
    log.masked("s1", np.arange(4, dtype=np.uint64), 1, 16)
    log.ended("s1", "done", {"contributors": ["dev-0", "dev-1"]})
    log.opened("s2", ("dev-0",), 16, 4, "advertise_keys")
    assert log.abort_open("restart") == ["s2"]
    assert [r["state"] for r in log.rounds()] == ["done", "aborted"]
    assert secure_contributions(store) == {"dev-0": 1, "dev-1": 1}
    store.add_task(_task(), encode(_task()))
    _store_update(store, "dev-0", local_accuracy=0.75)
    store.add_task(_task("t1", 1), encode(_task("t1", 1)))
    _store_update(store, "dev-0", "t1", local_accuracy=0.8)
    assert last_local_accuracy(store) == {
        "dev-0": {"last_local_accuracy": 0.8, "last_local_version": 0}}


# ---------------------------------------------------------------- db_url errors
def test_db_url_must_name_postgresql():
    with pytest.raises(ConfigError, match=r"db_url must start with postgresql://") as info:
        load_aggregator_config({"db_url": "mysql://u:secret@h/db"})
    assert "secret" not in str(info.value) and "\n" not in str(info.value)
    for bad in ("postgresql://[::1/x", "postgresql://h:port/db"):
        with pytest.raises(ConfigError, match=r"db_url is not a valid URL"):
            load_aggregator_config({"db_url": bad})
    config = load_aggregator_config({"db_url": "postgresql://u@h/db"})
    assert config.store_location == "postgresql://u@h/db"


def test_the_password_never_appears_in_messages():
    assert describe("postgresql://fedge:hunter2@db:5432/f") == "postgresql://fedge:***@db:5432/f"
    assert describe(Path("a.sqlite3")) == "a.sqlite3"


def test_an_unreachable_server_is_one_line_naming_db_url():
    url = f"postgresql://fedge:hunter2@127.0.0.1:{free_port()}/fedge"
    with pytest.raises(ValueError, match=r"^db_url postgresql://fedge:\*\*\*@127\.0\.0\.1:"
                       r"\d+/fedge: cannot connect to PostgreSQL: ") as info:
        Store(url)
    assert "\n" not in str(info.value) and "hunter2" not in str(info.value)


def test_a_missing_psycopg_is_one_line_naming_db_url(monkeypatch):
    import aggregator.store_postgres as pg

    monkeypatch.setattr(pg, "psycopg", None)
    with pytest.raises(ValueError, match=r"^db_url postgresql://h/db selects PostgreSQL, "
                                         r"which needs psycopg: pip install 'fedge\[postgres\]'"):
        Store("postgresql://h/db")


def test_psycopg_is_imported_only_for_a_postgresql_store(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from aggregator.service import Aggregator
        from aggregator.store import Store
        Store({str(tmp_path / "a.sqlite3")!r}).close()
        assert "psycopg" not in sys.modules, "imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize("action", ["serve", "enroll", "check", "recover"])
def test_the_cli_says_one_line_for_a_postgresql_store_it_cannot_use(tmp_path, capsys, action):
    config = tmp_path / "aggregator.toml"
    config.write_text(f'db_url = "postgresql://fedge:hunter2@127.0.0.1:{free_port()}/f"\n')
    key = "ed25519:" + base64.b64encode(bytes(32)).decode()
    extra = {"enroll": ["--device", "dev-0", "--key", key]}.get(action, [])
    assert main(["aggregator", action, "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedge aggregator {action}: ") and err.count("\n") == 1
    assert "db_url" in err and "hunter2" not in err
    assert "Traceback" not in err
    if action in ("check", "recover"):
        assert "SQLite-only" in err
    else:
        assert "cannot connect to PostgreSQL" in err


def test_the_cli_reads_and_writes_a_postgresql_store(tmp_path, capsys, postgres_url):
    """enroll, audit and status --config go through db_url like the service does."""
    config = tmp_path / "aggregator.toml"
    config.write_text(f'db_url = "{postgres_url}"\n')
    key = "ed25519:" + base64.b64encode(bytes(32)).decode()
    assert main(["aggregator", "enroll", "--config", str(config), "--device", "dev-0",
                 "--key", key]) == 0
    store = Store(postgres_url)
    try:
        assert store.device_key("dev-0") == key
        store.add_model(0, BLOB, "s", {"round": 0})
    finally:
        store.close()
    assert main(["aggregator", "audit", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model_version"] == 0 and status["rejections_total"] == 0


def test_opening_the_store_does_not_wait_for_an_open_write(make_store):
    """The dashboard opens the store per request while the service writes a batch."""
    writer = make_store()
    writer.add_task(_task(), encode(_task()))
    opened = []
    with writer.group():
        _store_update(writer, "dev-0")
        thread = threading.Thread(target=lambda: opened.append(make_store()), daemon=True)
        thread.start()
        thread.join(5)
        assert opened, "opening the store waited for the writer's transaction"
    assert opened[0].count_updates() == 1


def test_soft_writes_inside_an_open_transaction_are_part_of_it(make_store):
    store = make_store()
    with pytest.raises(ZeroDivisionError), store._transaction():
        store.add_rejection("evil", "n", "junk")
        raise ZeroDivisionError
    assert store.count_rejections() == 0 and not store.db.in_transaction
    with store._transaction():
        store.add_rejection("evil", "n", "junk")
    assert store.count_rejections() == 1


def test_a_lost_server_stops_a_batch_and_says_one_line(postgres_url):
    """The session killed mid-run (what a server restart does): a batch whose commit
    fails is GroupLost, so none of its acks go out; a statement says so in one line."""
    import psycopg

    def kill(store: Store) -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store.db.raw.info.backend_pid,))

    store = Store(postgres_url)
    with pytest.raises(GroupLost, match="lost the PostgreSQL server"), store.group():
        store.count("x")
        kill(store)  # before the COMMIT
    with pytest.raises(OSError, match=r"^db_url postgresql://\S+: lost the PostgreSQL server"):
        store.count("z")
    store.close()
    again = Store(postgres_url)
    assert again.counter("x") == 0  # nothing of the batch was committed
    with pytest.raises(StoreUnreachable), again.group():
        kill(again)
        again.count("y")  # a statement inside the batch: the service stops on it
    again.close()


def test_without_postgresql_its_tests_skip_and_say_why(monkeypatch):
    import tests.conftest as fixtures

    monkeypatch.setattr(fixtures, "find_postgres_bin", lambda: None)
    assert "apt-get install postgresql (scripts/setup.sh does)" in fixtures._postgres_missing()


def test_a_second_service_on_one_database_is_warned_about(make_store, caplog):
    first, second = make_store(), make_store()
    first.keep_sealed()
    second.keep_sealed()
    assert "is a second aggregator serving this store?" in caplog.text
    first.close()
    second.close()
    third = make_store()  # the locks went with the sessions (with the seal, for SQLite)
    caplog.clear()
    third.keep_sealed()
    assert "second aggregator" not in caplog.text


def test_the_sql_is_translated_for_postgresql_once_and_literally():
    from aggregator.secagg.store import SCHEMA as SECAGG_SCHEMA
    from aggregator.store_base import SCHEMA
    from aggregator.store_postgres import translate, translate_schema

    assert translate("SELECT a FROM t WHERE b=? AND c LIKE '50%?' LIMIT -1 OFFSET ?") == \
        "SELECT a FROM t WHERE b=%s AND c LIKE '50%%?' LIMIT ALL OFFSET %s"
    assert translate("x >= :factor * y AND z::text = :device") == \
        "x >= %(factor)s * y AND z::text = %(device)s"
    for script in (SCHEMA, SECAGG_SCHEMA):
        pg = translate_schema(script)
        assert pg.count("CREATE TABLE") == pg.count(", rowid BIGINT GENERATED BY DEFAULT")
        assert "BLOB" not in pg and " REAL" not in pg and "INTEGER" not in pg
