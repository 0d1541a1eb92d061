"""MQTT topic names: one federation is one topic prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(kind: str, value: str) -> str:
    """Federation and device names become topic levels, so they may not hold / + # or spaces."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):  # match() allows a final \n
        raise ValueError(f"{kind} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


@dataclass(frozen=True)
class Topics:
    federation: str
    root: str = "fedge"

    def __post_init__(self) -> None:
        check_name("federation", self.federation)

    @property
    def prefix(self) -> str:
        return f"{self.root}/{self.federation}"

    @property
    def model(self) -> str:
        """Retained manifest of the current global model."""
        return f"{self.prefix}/model"

    def model_chunk(self, version: int, index: int) -> str:
        return f"{self.prefix}/model/{version}/{index}"

    def model_chunks(self, version: int) -> str:
        """Subscription filter for every chunk of one model version."""
        return f"{self.prefix}/model/{version}/+"

    def model_delta_chunk(self, version: int, index: int) -> str:
        return f"{self.prefix}/model/{version}/d/{index}"

    def model_delta_chunks(self, version: int) -> str:
        """Subscription filter for every chunk of the delta that leads to `version`."""
        return f"{self.prefix}/model/{version}/d/+"

    @property
    def task(self) -> str:
        """Retained: what the aggregator wants now."""
        return f"{self.prefix}/task"

    def update(self, device: str) -> str:
        return f"{self.prefix}/update/{device}"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/update/+"

    def ack(self, device: str) -> str:
        return f"{self.prefix}/ack/{device}"

    def invite(self, device: str) -> str:
        """Retained: the aggregator's invitation of this one device by name (Invitation)."""
        return f"{self.prefix}/invite/{device}"

    def status(self, device: str) -> str:
        """Retained presence; the last will marks the device offline."""
        return f"{self.prefix}/status/{device}"

    @property
    def all_statuses(self) -> str:
        return f"{self.prefix}/status/+"

    def secagg(self, device: str) -> str:
        """Secure-aggregation messages of one round, device -> aggregator."""
        return f"{self.prefix}/secagg/{device}"

    @property
    def all_secagg(self) -> str:
        return f"{self.prefix}/secagg/+"

    def secagg_to(self, device: str) -> str:
        """Secure-aggregation messages relayed by the aggregator to one device."""
        return f"{self.prefix}/secagg_to/{device}"

    @property
    def rollout(self) -> str:
        """Retained: the version devices serve, the candidate canaries evaluate (Rollout)."""
        return f"{self.prefix}/rollout"

    def canary(self, device: str) -> str:
        """A canary device's report on a candidate (CanaryReport, docs/lifecycle.md)."""
        return f"{self.prefix}/canary/{device}"

    @property
    def all_canaries(self) -> str:
        return f"{self.prefix}/canary/+"

    def device_of(self, topic: str) -> str:
        """The device id is the last topic level of update, status and secagg topics."""
        device = topic.rsplit("/", 1)[-1]
        return check_name("device", device)
