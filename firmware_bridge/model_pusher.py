"""Getting the newest model onto the MCU: one push at a time, a newer one replacing one
not yet started, and again after the MCU restarts (it keeps the model in RAM).

Runs on the bridge's thread, but for `request`, which other threads call: it only
queues. The bridge tells it of the device's HELLO and of settled sends.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from firmware_bridge.bridge_config import PushResult
from firmware_bridge.journal import DeviceJournal
from firmware_bridge.link import Capability, Delivered, Failed, Hello, LinkEndpoint
from firmware_bridge.model_push import (
    CHUNK_HEADER,
    MIN_PUSH_PAYLOAD,
    ModelPush,
    PushState,
    check_model,
)

log = logging.getLogger("firmware_bridge.bridge")


class ModelPusher:
    """The model pushes of one link; `results` lists every finished one."""

    def __init__(self, endpoint: LinkEndpoint, journal: DeviceJournal,
                 on_confirmed: Callable[[PushResult], None] | None = None) -> None:
        self.endpoint = endpoint
        self.journal = journal
        self.on_confirmed = on_confirmed
        self.results: list[PushResult] = []
        self._requests: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self._wanted: tuple[bytes, int] | None = None  # the newest model asked for
        self._push: ModelPush | None = None
        self._token: int | None = None

    def request(self, blob: bytes, version: int) -> None:
        """Queue a model (any thread); ValueError for a model no MCU could be sent."""
        check_model(blob, int(version))
        self._requests.put((bytes(blob), int(version)))

    def owns(self, token: int) -> bool:
        return token == self._token

    def forget_in_flight(self) -> None:
        """The link was reset: the send in flight will never settle."""
        self._token = None

    def device_restarted(self) -> None:
        """A (re)started MCU lost the model in its RAM: send the newest again."""
        self._token = None
        if self._wanted is not None:
            self._push = self._new_push(*self._wanted)

    def take_requests(self) -> None:
        newest = None
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if newest is None or request[1] > newest[1]:
                newest = request
        if newest is None:
            return
        blob, version = newest
        if self._wanted is not None and self._wanted[1] >= version:
            return  # an older version than the one already pushed or on its way
        # A newer model replaces one still on its way; the MCU restarts at MODEL_BEGIN.
        self._wanted = (blob, version)
        self._push = self._new_push(blob, version)
        self._token = None

    def _new_push(self, blob: bytes, version: int) -> ModelPush:
        """Chunks fill the payload the MCU said it takes (its HELLO lowers the default).
        A device whose limit leaves no room is refused by `_cannot_take`, not here."""
        chunk = max(1, self.endpoint.peer_max_payload - CHUNK_HEADER)
        return ModelPush(blob, version, chunk)

    def advance(self, device: Hello | None, now: float) -> None:
        push = self._push
        if push is None or push.done or device is None or self._token is not None:
            return
        problem = self._cannot_take(push, device)
        if problem:
            push.state, push.reason = PushState.FAILED, problem
            self._finish(push)
            return
        message = push.next_message()
        if message is not None:
            self._token = self.endpoint.send(message, now)

    def _cannot_take(self, push: ModelPush, device: Hello) -> str:
        if not device.capabilities & Capability.MODEL_UPDATE:
            return f"device {device.device_id} does not take model updates"
        if self.endpoint.peer_max_payload < MIN_PUSH_PAYLOAD:
            return (f"device {device.device_id} takes payloads of at most "
                    f"{self.endpoint.peer_max_payload} bytes; a model push needs "
                    f"{MIN_PUSH_PAYLOAD}")
        if len(push.blob) > device.model_capacity:
            return (f"model of {len(push.blob)} bytes is larger than device "
                    f"{device.device_id}'s capacity of {device.model_capacity}")
        return ""

    def settled(self, event: Delivered | Failed) -> None:
        """The send this pusher is waiting for was acknowledged or gave up."""
        if event.token != self._token or self._push is None:
            return
        self._token = None
        if isinstance(event, Delivered):
            self._push.on_delivered(event.message, event.ack)
        else:
            self._push.on_failed(event.message, event.reason)
        if self._push.done:
            self._finish(self._push)

    def _finish(self, push: ModelPush) -> None:
        confirmed = push.state is PushState.CONFIRMED
        result = PushResult(push.version, len(push.blob), push.crc32, confirmed, push.reason,
                            time.time())
        if confirmed:
            log.info("bridge: model v%d (%d bytes, crc32 %08x) confirmed by the device",
                     push.version, len(push.blob), push.crc32)
        else:
            log.error("bridge: model v%d not delivered: %s", push.version, push.reason)
        self.journal.record({"kind": "model", "version": push.version,
                             "size": len(push.blob), "crc32": f"{push.crc32:08x}",
                             "confirmed": confirmed, "reason": push.reason})
        self.results.append(result)
        if self.on_confirmed is not None and confirmed:
            self.on_confirmed(result)
