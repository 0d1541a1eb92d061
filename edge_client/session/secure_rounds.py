"""The session's door to secure rounds (edge_client.secagg_session), opened on first use:
a device whose tasks never ask for one never imports the SecAgg code or cryptography."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_client.session.actions import Publish
from edge_client.shared.protocol import Task, Topics

if TYPE_CHECKING:
    from edge_client.secagg_session import DeviceSecAgg


class SecureRounds:
    def __init__(self, device_id: str, topics: Topics, max_bytes: int,
                 seal: Callable[[bytes], bytes]) -> None:
        self._args = (device_id, topics, max_bytes, seal)
        self._device: DeviceSecAgg | None = None

    @property
    def device(self) -> DeviceSecAgg:
        """The secure-round state machine and its test hooks (on_input, silent_from)."""
        if self._device is None:
            from edge_client.secagg_session import DeviceSecAgg

            self._device = DeviceSecAgg(*self._args)
        return self._device

    def join(self, task: Task, settings: Any, delta: np.ndarray) -> list[Publish]:
        return [Publish(t, p) for t, p in self.device.join(task, settings, delta)]

    def on_chunk(self, payload: bytes, unwrap: Callable[[bytes], bytes],
                 now: float) -> list[Publish]:
        if self._device is None:
            return []  # no secure round joined: nothing to answer
        return [Publish(t, p) for t, p in self._device.on_chunk(payload, unwrap, now)]

    def resend(self) -> list[Publish]:
        """After a reconnect: the latest reply again, if a round is under way."""
        return [] if self._device is None else [Publish(t, p) for t, p in
                                                self._device.resend()]
