"""Which rejections the service answers: token buckets per device and in all (fake clock)."""

from __future__ import annotations

from aggregator import rejection_gate
from aggregator.rejection_gate import RejectionGate


def test_a_flooding_device_is_answered_at_its_rate_then_only_counted(caplog):
    gate = RejectionGate(per_device_s=5, total_s=1000)
    with caplog.at_level("WARNING"):
        answered = sum(gate.allow("evil", 0.0) for _ in range(100))
    assert answered == 5 and gate.suppressed == 95
    assert len(caplog.records) == 1  # one summary line, not 95
    assert sum(gate.allow("evil", 1.0) for _ in range(100)) == 5  # refilled after 1 s
    assert gate.allow("honest", 1.0)  # another device has its own bucket


def test_many_ids_share_the_global_rate():
    gate = RejectionGate(per_device_s=5, total_s=20)
    answered = sum(gate.allow(f"ghost{i}", 0.0) for i in range(1000))
    assert answered == 20


def test_suppressions_are_summed_up_every_ten_seconds(caplog):
    gate = RejectionGate(per_device_s=1, total_s=100)
    with caplog.at_level("WARNING"):
        for step in range(300):  # 30 s of a flood, ten messages a second
            gate.allow("evil", step / 10)
    assert len(caplog.records) == 3
    assert sum(int(r.getMessage().split()[1]) for r in caplog.records) <= gate.suppressed


def test_the_per_device_buckets_are_bounded(monkeypatch):
    monkeypatch.setattr(rejection_gate, "TRACKED_DEVICES", 10)
    gate = RejectionGate(per_device_s=1, total_s=10**6)
    for i in range(100):
        gate.allow(f"ghost{i}", 0.0)
    assert len(gate._devices) == 10
