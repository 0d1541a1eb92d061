"""A store that knows it is damaged: the seal, the start-up check, recover, and the
downlink encoder's residual stored with each version (docs/gateway.md, 'When the store
is damaged'). The aggregators here are never connected: versions are made offline."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.privacy.config import PrivacyConfig
from aggregator.service import Aggregator, now
from aggregator.store_check import ProblemKind, StoreDamaged, check_store
from aggregator.store_recover import recover_store
from aggregator.store_seal import SLOT, Seal, SealWriter, read_seal, seal_path, write_new_seal
from edge_client.shared.protocol import Task, TrainConfig, Update, encode

MODEL = {"a": np.linspace(-1, 1, 60, dtype=np.float32).reshape(6, 10),
         "b": np.zeros(10, np.float32)}


def _aggregator(db, seed: int = 3, **config) -> Aggregator:
    return Aggregator(AggregatorConfig(db_path=db, seed=seed, **config), initial_weights=MODEL)


def _make_version(agg: Aggregator, tag: str = "") -> None:
    """What a sync round does: a task, three stored updates, then the version."""
    state = agg.core.state  # driven directly: no broker, no loop
    n = state.version + 1
    task = Task(task_id=f"r{n}{tag}", mode="sync", round=n, model_version=n - 1,
                train=TrainConfig(), invited=("d0", "d1", "d2"))
    agg.store.add_task(task, encode(task))
    state.task = task
    for i in range(3):
        rng = np.random.default_rng([n, i])
        update = Update(device_id=f"d{i}", task_id=task.task_id, nonce=f"n{n}{tag}-{i}",
                        base_version=n - 1, num_samples=10 + i,
                        tensors={k: rng.normal(0, 0.05, v.shape).astype(np.float32)
                                 for k, v in MODEL.items()})
        assert agg.store.add_update(update, encode(update), "pending")
        state.pending.add(update, len(encode(update)))
    agg.core.versions.make(state, now())
    assert state.version == n


def _blobs(db) -> dict[int, bytes]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT version, blob FROM models"))


# ------------------------------------------------------------ downlink state


def test_a_restart_in_the_middle_makes_the_same_models_as_an_uninterrupted_run(tmp_path):
    straight = _aggregator(tmp_path / "a.sqlite3")
    for _ in range(6):
        _make_version(straight)
    straight.store.close()

    db = tmp_path / "b.sqlite3"
    first = _aggregator(db)
    for _ in range(3):
        _make_version(first)
    first.store.close()
    second = _aggregator(db)  # restarted: the residual comes from the store
    assert second.version == 3
    for _ in range(3):
        _make_version(second)
    second.store.close()

    expected, got = _blobs(tmp_path / "a.sqlite3"), _blobs(db)
    assert sorted(got) == list(range(7))
    assert all(got[v] == expected[v] for v in range(7))


def test_without_the_stored_residual_the_models_after_a_restart_differ(tmp_path):
    """The test above can fail: error feedback is what makes the difference."""
    straight = _aggregator(tmp_path / "a.sqlite3")
    for _ in range(5):
        _make_version(straight)
    straight.store.close()
    db = tmp_path / "b.sqlite3"
    first = _aggregator(db)
    for _ in range(3):
        _make_version(first)
    first.store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM downlink_state")  # as a store from an older fedge
    second = _aggregator(db)
    for _ in range(2):
        _make_version(second)
    second.store.close()
    assert _blobs(db)[5] != _blobs(tmp_path / "a.sqlite3")[5]


# ------------------------------------------------------------ the seal


def test_the_seal_keeps_the_newest_valid_slot_and_survives_a_torn_one(tmp_path):
    path = tmp_path / "s.seal"
    write_new_seal(path, Seal(0, 0, "x", seq=1))
    writer = SealWriter(path, Seal(0, 0, "x", seq=1))
    writer.write(5, 2, "abc")  # seq 2 -> slot 0
    writer.write(6, 2, "abc")  # seq 3 -> slot 1
    writer.close()
    assert read_seal(path) == Seal(6, 2, "abc", seq=3)
    data = bytearray(path.read_bytes())
    data[SLOT + 7] ^= 0xFF  # a power cut tore the newest slot
    path.write_bytes(bytes(data))
    assert read_seal(path) == Seal(5, 2, "abc", seq=2)  # older: the check stays conservative
    data[7] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no valid seal record"):
        read_seal(path)
    assert read_seal(tmp_path / "none.seal") is None


def test_the_seal_follows_every_acked_update_and_version(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    _make_version(agg)
    _make_version(agg)
    seal = read_seal(seal_path(db))
    assert (seal.updates, seal.version) == (6, 2)
    assert seal.sha256 == agg.store.model_sha256(2)
    agg.store.close()
    assert check_store(db).ok


# ------------------------------------------------------------ damage and recovery


def _sealed_store_with_wal(tmp_path) -> Aggregator:
    """A store of versions 0..2 whose versions 1 and 2 live only in its WAL, as after a
    SIGKILL. Not closed: closing would checkpoint the WAL into the main file."""
    agg = _aggregator(tmp_path / "agg.sqlite3")
    agg.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _make_version(agg)
    _make_version(agg)
    return agg


def test_a_deleted_wal_is_refused_and_recover_reports_what_was_lost(tmp_path):
    agg = _sealed_store_with_wal(tmp_path)
    wal = tmp_path / "agg.sqlite3-wal"
    assert wal.stat().st_size > 0
    # the killed process's files: copy the main file and seal, but not the WAL
    crash = tmp_path / "crash"
    crash.mkdir()
    for name in ("agg.sqlite3", "agg.sqlite3.seal"):
        shutil.copy2(tmp_path / name, crash / name)
    agg.store.close()
    db = crash / "agg.sqlite3"
    with pytest.raises(StoreDamaged) as refused:
        _aggregator(db)
    message = str(refused.value)
    assert "the seal records 6 acknowledged updates; the store holds 0: 6 lost" in message
    assert "fedge aggregator recover" in message and "\n" not in message
    report = check_store(db)
    assert report.kinds() >= {ProblemKind.LOST_UPDATES, ProblemKind.LOST_VERSIONS}
    assert (report.lost_updates, report.lost_versions) == (6, 2)

    recovered = recover_store(db)
    assert recovered.ok, recovered.lines()
    text = "\n".join(recovered.lines())
    assert "lost for good: 6 acknowledged updates" in text
    assert "lost for good: model versions 1..2" in text
    assert (recovered.backup_dir / "agg.sqlite3.seal").exists()
    restarted = _aggregator(db)  # serves again, from version 0
    assert restarted.version == 0
    restarted.store.close()


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_changed_model_blob_is_refused_and_recover_rolls_back_to_the_last_good_one(
        tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    for _ in range(3):
        _make_version(agg)
    agg.store.close()
    with sqlite3.connect(db) as conn:  # one flipped byte inside version 2's blob
        blob = bytearray(conn.execute("SELECT blob FROM models WHERE version=2").fetchone()[0])
        blob[len(blob) // 2] ^= 0x01
        conn.execute("UPDATE models SET blob=? WHERE version=2", (bytes(blob),))
    with pytest.raises(StoreDamaged, match="version 2 fails its stored SHA-256"):
        _aggregator(db)
    recovered = recover_store(db)
    assert recovered.ok
    assert recovered.dropped_versions == [2, 3]
    assert recovered.reopened_updates == 6  # rounds 2 and 3: intact, pending again
    restarted = _aggregator(db)
    assert restarted.version == 1 and restarted.pending_count == 6
    assert restarted.store.count_updates() == 9  # nothing acknowledged is gone
    _make_version(restarted, "again")  # and it makes versions again, with them
    assert len(restarted.store.audit(2)) == 9
    restarted.store.close()
    assert check_store(db).ok


def test_a_damaged_main_file_is_refused_and_recover_says_restore_a_backup(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    _make_version(agg)
    agg.store.close()
    _flip(db, 3)  # the header: "SQLite format 3"
    with pytest.raises(StoreDamaged, match=r"SQLite cannot read .*agg\.sqlite3"):
        _aggregator(db)
    recovered = recover_store(db)
    assert not recovered.ok and "Restore the store from a backup" in recovered.refused
    assert (recovered.backup_dir / "agg.sqlite3").read_bytes() == db.read_bytes()


def test_a_damaged_btree_page_is_found_by_quick_check(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    _make_version(agg)
    agg.store.close()
    page = 4096
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='updates'"
                            ).fetchone()[0]
    data = bytearray(db.read_bytes())
    data[(root - 1) * page: (root - 1) * page + 8] = b"\xff" * 8  # its page header
    db.write_bytes(bytes(data))
    report = check_store(db)
    assert report.kinds() & {ProblemKind.CORRUPT, ProblemKind.UNREADABLE}
    with pytest.raises(StoreDamaged):
        _aggregator(db)


def test_a_missing_seal_of_a_sealed_store_is_refused_and_recover_reseals(tmp_path):
    db = tmp_path / "agg.sqlite3"
    _aggregator(db).store.close()
    seal_path(db).unlink()
    with pytest.raises(StoreDamaged, match=r"seal file .* is missing"):
        _aggregator(db)
    assert recover_store(db).ok
    _aggregator(db).store.close()


def test_a_store_from_before_seals_is_sealed_at_start(tmp_path):
    db = tmp_path / "agg.sqlite3"
    _aggregator(db).store.close()
    seal_path(db).unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM notes WHERE key='sealed'")
    assert check_store(db).ok
    _aggregator(db).store.close()
    assert read_seal(seal_path(db)).version == 0


def test_a_gap_in_the_versions_is_refused_and_recover_rolls_back_before_it(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    for _ in range(3):
        _make_version(agg)
    agg.store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM models WHERE version=2")
    report = check_store(db)
    assert {ProblemKind.VERSION_CHAIN, ProblemKind.ORPHAN_UPDATES} <= report.kinds()
    assert "1 missing (2)" in "\n".join(report.lines())
    with pytest.raises(StoreDamaged):
        _aggregator(db)
    recovered = recover_store(db)
    assert recovered.ok and recovered.dropped_versions == [3]
    assert recovered.reopened_updates == 6  # version 2's orphans and version 3's
    restarted = _aggregator(db)
    assert restarted.version == 1 and restarted.pending_count == 6
    restarted.store.close()


def test_a_damaged_downlink_residual_is_refused_and_recover_drops_it(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    _make_version(agg)
    agg.store.close()
    with sqlite3.connect(db) as conn:
        state = bytearray(conn.execute("SELECT residual FROM downlink_state WHERE version=1"
                                       ).fetchone()[0])
        state[10] ^= 0x40
        conn.execute("UPDATE downlink_state SET residual=? WHERE version=1", (bytes(state),))
    with pytest.raises(StoreDamaged, match="residual stored with version 1 fails its CRC"):
        _aggregator(db)
    recovered = recover_store(db)
    assert recovered.ok and recovered.residual_dropped
    assert "restarts from zero" in "\n".join(recovered.lines())
    restarted = _aggregator(db)
    assert restarted.version == 1
    restarted.store.close()


def test_another_model_under_the_sealed_version_is_refused(tmp_path):
    """A store swapped for another one that holds as much: the sealed hash tells."""
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)
    _make_version(agg)
    agg.store.close()
    with sqlite3.connect(db) as conn:  # version 1 replaced, consistently, by other bytes
        conn.execute("UPDATE models SET blob=(SELECT blob FROM models WHERE version=0), "
                     "sha256=(SELECT sha256 FROM models WHERE version=0) WHERE version=1")
    report = check_store(db)
    assert report.kinds() == {ProblemKind.SEAL_MISMATCH}
    with pytest.raises(StoreDamaged, match="model version 1 in the store is not the one sealed"):
        _aggregator(db)


def test_recover_refuses_while_an_aggregator_serves_the_store(tmp_path):
    db = tmp_path / "agg.sqlite3"
    agg = _aggregator(db)  # holds the seal's lock until its store closes
    with pytest.raises(ValueError, match="stop it before recovering"):
        recover_store(db)
    assert not list(tmp_path.glob("agg.sqlite3.damaged-*"))  # not even a backup made
    agg.store.close()
    assert recover_store(db).ok


def test_versions_recover_drops_keep_their_privacy_cost(tmp_path):
    """They were published: dropping them must not lower epsilon."""
    db = tmp_path / "agg.sqlite3"
    private = {"privacy": PrivacyConfig(mode="central")}
    agg = _aggregator(db, **private)
    for _ in range(3):
        _make_version(agg)
    spent = agg.privacy.accountant.epsilon()
    assert len(agg.privacy.accountant.steps) == 3
    agg.store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE models SET blob=x'00' WHERE version=2")
    recovered = recover_store(db)
    assert recovered.ok and recovered.dropped_versions == [2, 3] and recovered.private
    restarted = _aggregator(db, **private)
    assert restarted.version == 1
    assert len(restarted.privacy.accountant.steps) == 3
    assert restarted.privacy.accountant.epsilon() == pytest.approx(spent)
    restarted.store.close()
