"""What the MQTT link (and the admin API) queue for the service, as the core's events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aggregator.core import (
    AdoptModel,
    CanaryMessage,
    Event,
    Instant,
    LinkDown,
    LinkUp,
    RefusedUpload,
    SecAggChunk,
    SetStrategy,
    SetTraining,
    StatusMessage,
    UpdateChunk,
    UpperAsks,
    UpperFinished,
    VerifiedUpdate,
)
from edge_client.shared.protocol import Topics
from edge_client.shared.transport import Connected, Disconnected, Inbound


def core_event_of(event: object, topics: Topics, now: Callable[[], Instant]) -> Event | None:
    """The core's event for one queued item, stamped with `now()`; None for what the
    core does not take (an empty payload: a retained message being cleared)."""
    if isinstance(event, SetTraining | SetStrategy):
        return event
    if isinstance(event, AdoptModel | UpperAsks | UpperFinished):  # from a site's uplink
        return dataclasses.replace(event, at=now())
    if isinstance(event, VerifiedUpdate | RefusedUpload):  # from an ingest worker
        return dataclasses.replace(event, at=now())
    if isinstance(event, Connected):
        return LinkUp(now())
    if isinstance(event, Disconnected):
        return LinkDown(now(), event.reason)
    if not isinstance(event, Inbound) or not event.payload:
        return None
    prefix, topic = topics.prefix, event.topic
    if topic.startswith(prefix + "/update/"):
        return UpdateChunk(topic, event.payload, event.retained, now())
    if topic.startswith(prefix + "/status/"):
        return StatusMessage(topic, event.payload, event.retained, now())
    if topic.startswith(prefix + "/secagg/"):
        return SecAggChunk(topic, event.payload, now())
    if topic.startswith(prefix + "/canary/"):
        return CanaryMessage(topic, event.payload, now())
    return None
