"""Seeds both sides derive without sending them (random-k indices, downlink deltas)."""

from __future__ import annotations

import hashlib


def update_seed(task_id: str, device_id: str) -> int:
    """A device's random-k seed for one task: distinct per device, known to the aggregator."""
    digest = hashlib.sha256(f"update/{task_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def training_seed(device_id: str, round_no: int, model_version: int) -> int:
    """A device's shuffling and rounding seed for one task: runs repeat exactly."""
    digest = hashlib.sha256(f"train/{device_id}/{round_no}/{model_version}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def delta_seed(version: int) -> int:
    """The seed of the downlink delta that leads to model `version`."""
    digest = hashlib.sha256(f"delta/{version}".encode()).digest()
    return int.from_bytes(digest[:8], "little")
