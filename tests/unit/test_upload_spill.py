"""Unfinished uploads past the memory budget wait in files (aggregator/upload_spill.py):
interleaved uploads still reassemble byte for byte, memory stays at the budget, and no
file outlives its upload."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest

from aggregator.config import load_aggregator_config
from aggregator.limits import LimitsConfig, upload_assembler
from aggregator.upload_spill import FileSpill
from edge_client.shared.protocol import Assembler
from edge_client.shared.protocol.chunking import split

CHUNK = 1024


def _uploads(count: int, size: int = 5000) -> dict[str, tuple[bytes, list[bytes]]]:
    out = {}
    for i in range(count):
        payload = os.urandom(size)
        out[f"dev{i}"] = (payload, split(payload, f"t{i}", CHUNK))
    return out


def _interleaved(uploads: dict[str, tuple[bytes, list[bytes]]]) -> list[tuple[str, bytes]]:
    """Chunk 0 of every device, then chunk 1 of every device, ...: as a broker forwards
    devices that upload at once."""
    longest = max(len(chunks) for _, chunks in uploads.values())
    return [(device, chunks[i]) for i in range(longest)
            for device, (_, chunks) in uploads.items() if i < len(chunks)]


def test_interleaved_uploads_reassemble_with_memory_held_at_the_budget(tmp_path):
    spill = FileSpill(str(tmp_path))
    budget = 8 * CHUNK
    assembler = Assembler(10**6, max_transfers=100, memory_bytes=budget, spill=spill)
    uploads = _uploads(40)  # 40 x 5 chunks open at once: 200 KB against an 8 KB budget
    done = {}
    for device, message in _interleaved(uploads):
        result = assembler.add(device, message, 0.0)
        assert assembler.memory_held() <= budget
        if result is not None:
            done[device] = result[1]
    assert done == {device: payload for device, (payload, _) in uploads.items()}
    assert assembler.spilled > 100
    assert assembler.memory_held() == 0 and assembler.pending_bytes() == 0
    assert spill.held_files() == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_redelivered_or_reordered_chunk_is_still_taken_once(tmp_path):
    assembler = Assembler(10**6, memory_bytes=0, spill=FileSpill(str(tmp_path)))
    payload = os.urandom(6000)
    chunks = split(payload, "t", CHUNK)
    order = chunks + chunks[:3]  # QoS 1 redeliveries of spilled chunks
    random.Random(1).shuffle(order)
    results = [r for c in order if (r := assembler.add("dev", c, 0.0)) is not None]
    assert results == [("t", payload)]


def test_a_dropped_upload_leaves_no_file(tmp_path):
    spill = FileSpill(str(tmp_path))
    assembler = Assembler(10**6, max_transfers_per_source=1, timeout_s=10.0,
                          memory_bytes=0, spill=spill)
    first, second = split(os.urandom(5000), "a", CHUNK), split(os.urandom(5000), "b", CHUNK)
    assembler.add("dev", first[0], 0.0)
    assembler.add("dev", second[0], 1.0)  # replaces the device's own "a"
    assert spill.held_files() == 1
    assembler.expire(20.0)  # "b" stalled
    assert spill.held_files() == 0 and assembler.open_count() == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_spill_that_cannot_write_keeps_the_chunks_in_memory(tmp_path, caplog):
    spill = FileSpill(str(tmp_path / "missing"))  # no such directory
    assembler = Assembler(10**6, memory_bytes=0, spill=spill)
    payload = os.urandom(5000)
    results = [assembler.add("dev", c, 0.0) for c in split(payload, "t", CHUNK)]
    assert results[-1] == ("t", payload)
    assert assembler.spilled == 0
    assert "holding it in memory instead" in caplog.text


def test_an_unreadable_spill_drops_the_upload_unanswered(tmp_path, caplog):
    spill = FileSpill(str(tmp_path))
    assembler = Assembler(10**6, memory_bytes=0, spill=spill)
    chunks = split(os.urandom(5000), "t", CHUNK)
    for chunk in chunks[:-1]:
        assert assembler.add("dev", chunk, 0.0) is None
    for path in tmp_path.rglob("*"):
        if path.is_file():
            path.unlink()  # the temporary files were cleaned away under us
    assert assembler.add("dev", chunks[-1], 0.0) is None  # no ack: the device resends
    assert assembler.open_count() == 0 and assembler.pending_bytes() == 0
    assert "could not be read back" in caplog.text


def test_close_removes_the_directory(tmp_path):
    spill = FileSpill(str(tmp_path))
    assert spill.put(("dev", "t"), 0, b"x" * 10)
    spill.close()
    assert list(tmp_path.iterdir()) == []


def test_a_negative_memory_budget_is_refused():
    with pytest.raises(ValueError, match="upload_memory_bytes"):
        LimitsConfig(upload_memory_bytes=-1)


def test_the_limits_table_sets_the_budget_and_the_folder(tmp_path):
    config = load_aggregator_config({"limits": {"upload_memory_bytes": 0,
                                                "upload_spill_dir": str(tmp_path)}}, "agg.toml")
    assembler = upload_assembler(config)
    payload = os.urandom(5000)
    chunks = split(payload, "t", CHUNK)
    results = [assembler.add("dev", c, 0.0) for c in chunks]
    assert results[-1] == ("t", payload)
    assert assembler.spilled == len(chunks) - 1  # the last one completes it: never spilled
    assert [p.name.startswith("fedge-uploads-") for p in tmp_path.iterdir()] == [True]
    assert load_aggregator_config({}, "agg.toml").limits.upload_memory_bytes == 32 * 2**20


def test_spilled_chunks_leave_no_copy_in_memory(tmp_path):
    """An open upload keeps its first chunk's header, not its data: else every open
    upload held 64 KB in memory, spilled or not."""
    assembler = Assembler(10**8, max_transfers=1000, memory_bytes=0,
                          spill=FileSpill(str(tmp_path)))
    firsts = [split(os.urandom(200_000), f"t{i}", 65536)[0] for i in range(100)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, message in enumerate(firsts):
            assert assembler.add(f"dev{i}", message, 0.0) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert assembler.spilled == 100
    assert held < 1_000_000  # 100 x 64 KB would be 6.5 MB


def test_a_truncated_spill_file_is_unreadable(tmp_path):
    spill = FileSpill(str(tmp_path))
    assert spill.put(("dev", "t"), 0, b"x" * 100)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            path.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="holds 10 bytes, not 100"):
        spill.take(("dev", "t"))
