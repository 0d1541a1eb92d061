"""Rejection history: pruned per device and in all, indexed, and one rejection's cost
independent of how many came before (counted in SQLite VM steps, not seconds)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aggregator.anomalies import AnomalyConfig, AnomalyWatch, device_anomalies
from aggregator.store import Store


@pytest.fixture
def store(make_store):
    made = make_store()  # on SQLite and on PostgreSQL (tests/conftest.py)
    if made.engine == "sqlite":
        made.db.execute("PRAGMA synchronous=OFF")  # these tests do not test durability
    return made


def _raw_history(store: Store, device: str, rows: int) -> None:
    """Rows as an older, unpruned store holds them."""
    store.db.executemany("INSERT INTO rejections VALUES (?, ?, ?, ?)",
                         [(float(i), device, f"old{i}", "junk") for i in range(rows)])


def _steps(store: Store, action: Callable[[], object]) -> int:
    """SQLite virtual machine steps `action` takes: work done, without a clock."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    store.db.raw.set_progress_handler(tick, 1)
    try:
        action()
    finally:
        store.db.raw.set_progress_handler(None, 1)
    return count[0]


def test_each_device_keeps_only_its_newest_rejections(store):
    store.keep_rejections(per_device=5, total=1000)
    for i in range(20):
        store.add_rejection("evil", f"n{i}", "junk")
    for i in range(3):
        store.add_rejection("good", f"g{i}", "bad shape")
    assert store.count_rejections("evil") == 5
    assert store.count_rejections("good") == 3
    kept = [n for d, n, _ in store.rejections() if d == "evil"]
    assert sorted(kept) == sorted(f"n{i}" for i in range(15, 20))


def test_the_whole_history_stays_near_its_cap_and_keeps_the_newest(store):
    store.keep_rejections(per_device=100, total=50)
    for i in range(400):
        store.add_rejection(f"dev{i % 37}", f"n{i}", "junk")
        assert store.count_rejections() <= 50 + 5  # trimmed every total / 10
    nonces = {n for _, n, _ in store.rejections()}
    assert "n399" in nonces and "n0" not in nonces


def test_an_old_unpruned_history_is_pruned_by_the_next_rejection(store):
    _raw_history(store, "evil", 5000)
    store.add_rejection("evil", "new", "junk")
    assert store.count_rejections("evil") == 100  # the default keep


def test_rejections_and_updates_are_indexed_by_device(store):
    catalog = ("SELECT name, tbl_name FROM sqlite_master WHERE type='index'"
               if store.engine == "sqlite" else
               "SELECT indexname, tablename FROM pg_indexes WHERE schemaname='public'")
    indexes = {row[0]: row[1] for row in store.db.execute(catalog)}
    assert indexes.get("rejections_device") == "rejections"
    assert indexes.get("updates_device") == "updates"
    if store.engine != "sqlite":
        return  # PostgreSQL's planner scans a table this small; the index is there
    plan = " ".join(str(r) for r in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT rowid FROM rejections WHERE device_id=? "
        "ORDER BY at DESC LIMIT 10", ("evil",)))
    assert "rejections_device" in plan and "SCAN rejections" not in plan


def test_one_rejection_costs_the_same_after_a_long_history(store):
    if store.engine != "sqlite":
        pytest.skip("counts SQLite VM steps; the indexes it relies on are the same")
    config = AnomalyConfig()
    watch = AnomalyWatch(store, config)
    store.keep_rejections(per_device=100, total=10**6)

    def one() -> None:
        store.add_rejection("evil", "n", "junk")
        watch.after_rejection("evil")

    for _ in range(150):  # the device's history is full (100 kept)
        one()
    short = _steps(store, one)
    _raw_history(store, "other", 20_000)  # a long history of another device ...
    long_other = _steps(store, one)
    store.keep_rejections(per_device=5000, total=10**6)
    _raw_history(store, "evil", 5000)  # ... and 5,000 kept rejections of its own
    store.add_rejection("evil", "n", "junk")
    long_own = _steps(store, lambda: watch.after_rejection("evil"))
    short_check = _steps(store, lambda: device_anomalies(store, config, "evil"))
    assert long_other < 2 * short, (short, long_other)
    # the anomaly check reads the newest `window` rows, however many are kept
    assert long_own < 2 * short_check + 200, (short_check, long_own)
    assert long_own < 5000  # a scan of the device's rows would take more steps than rows


def test_flags_still_follow_the_window_after_pruning(store):
    store.keep_rejections(per_device=10, total=1000)
    watch = AnomalyWatch(store, AnomalyConfig(window=10, threshold=3))
    for i in range(50):
        store.add_rejection("evil", f"n{i}", "junk")
        watch.after_rejection("evil")
    assert "evil" in watch.flagged
    row = device_anomalies(store, AnomalyConfig(), "evil")[0]
    assert row["rejected"] == 10 and row["last_rejection"] == "junk"
