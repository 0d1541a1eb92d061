from __future__ import annotations

import pytest

from edge_client.outbox import Outbox, OutboxFull, atomic_write


def test_put_survives_a_new_instance_and_remove_clears(tmp_path):
    Outbox(tmp_path).put("ab" * 8, b"payload")
    again = Outbox(tmp_path)
    assert [(e.nonce, e.payload) for e in again.entries()] == [("ab" * 8, b"payload")]
    assert again.remove("ab" * 8) is True
    assert again.remove("ab" * 8) is False
    assert len(Outbox(tmp_path)) == 0


def test_outbox_is_bounded_and_refuses_rather_than_drops(tmp_path):
    box = Outbox(tmp_path, max_entries=2)
    box.put("00" * 8, b"a")
    box.put("11" * 8, b"b")
    with pytest.raises(OutboxFull):
        box.put("22" * 8, b"c")
    assert len(box) == 2


@pytest.mark.parametrize("nonce", ["../escape", "", "ZZ" * 8, "a" * 65])
def test_nonces_cannot_name_other_files(tmp_path, nonce):
    with pytest.raises(ValueError):
        Outbox(tmp_path).put(nonce, b"x")


def test_set_aside_keeps_the_bytes_out_of_the_way(tmp_path):
    box = Outbox(tmp_path)
    box.put("cd" * 8, b"garbage")
    box.set_aside("cd" * 8, "unreadable")
    assert box.nonces() == []
    assert (tmp_path / "corrupt" / f"{'cd' * 8}.update").read_bytes() == b"garbage"


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
