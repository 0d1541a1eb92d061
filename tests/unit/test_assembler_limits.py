"""Assembler limits under floods: per-source and global bounds, fairness, bookkeeping that
never walks the open uploads, and rate-limited eviction logs."""

from __future__ import annotations

import os
import random

import pytest

from edge_client.shared.protocol import Assembler, RemoteProtocolError
from edge_client.shared.protocol.chunking import split


def _chunks(transfer: str, size: int = 3000, chunk_size: int = 1024) -> list[bytes]:
    return split(os.urandom(size), transfer, chunk_size)


class _NoScan(dict):
    """A dict that fails the test if anything walks all of its entries."""

    def _scan(self, *args, **kwargs):
        raise AssertionError("walked every open upload")

    __iter__ = values = items = keys = _scan  # type: ignore[assignment]


def test_a_device_over_its_limit_loses_its_least_recently_active_upload():
    assembler = Assembler(max_payload=10**6, max_transfers_per_source=2)
    a, b = _chunks("a"), _chunks("b")
    assembler.add("dev", a[0], 0.0)
    assembler.add("dev", b[0], 1.0)
    assembler.add("dev", a[1], 2.0)  # "a" is active again, "b" is the idlest
    assembler.add("dev", _chunks("c")[0], 3.0)
    assert assembler.open_count() == 2
    assert [assembler.add("dev", c, 4.0) for c in a[2:]][-1] is not None  # "a" survived
    assert assembler.evicted == 0  # a device replacing its own upload is not an eviction


def test_the_global_count_limit_holds_under_a_flood_of_device_ids():
    assembler = Assembler(max_payload=10**6, max_transfers=10)
    for i in range(500):
        assembler.add(f"ghost{i}", _chunks("t")[0], float(i))
        assert assembler.open_count() <= 10
    assert assembler.evicted == 490


def test_an_active_honest_upload_survives_a_flood_from_many_ids():
    assembler = Assembler(max_payload=10**6, max_transfers=10)
    honest = _chunks("h", 20_000)  # 21 chunks, started before the flood
    assembler.add("honest", honest[0], 0.0)
    done, sent = None, 1
    for i in range(400):  # ghosts start uploads they never finish
        assembler.add(f"ghost{i}", _chunks("t")[0], float(i))
        if i % 5 == 4 and sent < len(honest):  # the honest device keeps sending
            done = assembler.add("honest", honest[sent], float(i))
            sent += 1
    while sent < len(honest):
        done = assembler.add("honest", honest[sent], 500.0)
        sent += 1
    assert done is not None and done[0] == "h"


def test_the_global_limit_evicts_the_device_holding_the_most_uploads_first():
    assembler = Assembler(max_payload=10**6, max_transfers_per_source=5, max_transfers=6)
    honest = {name: _chunks("h") for name in ("d1", "d2", "d3")}
    for name, chunks in honest.items():  # three devices, one idle upload each, oldest
        assembler.add(name, chunks[0], 0.0)
    for i in range(20):  # one flooder, always the most recently active
        assembler.add("flooder", _chunks(f"f{i}")[0], 1.0 + i)
    assert assembler.open_count() == 6
    for name, chunks in honest.items():  # every honest upload is still there
        assert [assembler.add(name, c, 30.0) for c in chunks[1:]][-1] is not None
    assert assembler.open_count() == 3  # the flooder's three


def test_the_global_byte_limit_counts_declared_sizes():
    assembler = Assembler(max_payload=10_000, max_total_bytes=25_000)
    for i in range(50):
        assembler.add(f"dev{i}", _chunks("t", 10_000)[0], float(i))
        assert assembler.reserved_bytes() <= 25_000
    assert assembler.open_count() == 2


def test_running_totals_match_the_open_uploads_through_a_random_workload():
    rng = random.Random(7)
    assembler = Assembler(max_payload=20_000, max_transfers_per_source=3, max_transfers=8,
                          max_total_bytes=60_000, timeout_s=50)
    plans = {}
    for step in range(3000):
        source = f"dev{rng.randrange(12)}"
        key = (source, f"t{rng.randrange(5)}")
        if key not in plans:
            plans[key] = _chunks(key[1], rng.randrange(500, 20_000))
        chunks = plans[key]
        try:
            if assembler.add(source, rng.choice(chunks), float(step)) is not None:
                del plans[key]
        except RemoteProtocolError:  # disagrees with an evicted plan's chunk: dropped
            del plans[key]
        if step % 100 == 0:
            assembler.expire(float(step))
        partials = dict.values(assembler._partial)
        assert assembler.reserved_bytes() == sum(p.first.size for p in partials)
        assert assembler.pending_bytes() == sum(p.received for p in partials)
        assert assembler.open_count() == len(assembler._partial) <= 8
        assert assembler.reserved_bytes() <= 60_000


def test_no_operation_walks_the_open_uploads():
    assembler = Assembler(max_payload=10**6, max_transfers=50, timeout_s=100)
    assembler._partial = _NoScan()
    for i in range(300):  # evictions, per-source replacement, completions, expiry
        assembler.add(f"ghost{i % 120}", _chunks(f"t{i}")[0], float(i))
        assembler.pending_bytes()
        assembler.reserved_bytes()
        assembler.expire(float(i))
    chunks = _chunks("whole")
    assert [assembler.add("honest", c, 300.0) for c in chunks][-1] is not None
    assert assembler.open_count() <= 50


def test_expiry_counts_from_the_first_chunk_in_start_order():
    assembler = Assembler(max_payload=10**6, timeout_s=10)
    first, second = _chunks("a"), _chunks("b")
    assembler.add("d1", first[0], 0.0)
    assembler.add("d2", second[0], 5.0)
    assembler.add("d1", first[1], 9.0)  # activity does not extend the deadline
    assert assembler.expire(10.5) == [("d1", "a")]
    assert assembler.expire(15.5) == [("d2", "b")]
    assert assembler.open_count() == 0 and assembler.pending_bytes() == 0


def test_evictions_are_logged_at_most_every_ten_seconds(caplog):
    assembler = Assembler(max_payload=10**6, max_transfers=2)
    with caplog.at_level("WARNING", logger="edge_client.shared.protocol.chunking"):
        for i in range(40):
            assembler.add(f"ghost{i}", _chunks("t")[0], i * 0.1)  # 4 s of flood
        assert len(caplog.records) == 1
        assembler.add("late", _chunks("t")[0], 20.0)
    assert len(caplog.records) == 2
    assert "38 open upload(s) dropped" in caplog.records[1].getMessage()


@pytest.mark.parametrize("limit", [1, 3])
def test_a_device_never_holds_more_than_its_limit(limit):
    assembler = Assembler(max_payload=10**6, max_transfers_per_source=limit)
    for i in range(20):
        assembler.add("dev", _chunks(f"t{i}")[0], float(i))
        assert assembler.open_count() <= limit
