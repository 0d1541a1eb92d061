"""The states the aggregator stores for tasks and updates (the `state` columns of
aggregator/store.py), as Enums whose members are the stored strings."""

from __future__ import annotations

from edge_client.shared.protocol.states import WireEnum


class TaskState(WireEnum):
    """A round's task: open until its version is made (closed) or it is given up."""

    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


class UpdateState(WireEnum):
    """A stored update: waiting for its version, used in one, too late, or dropped with
    its aborted round (or by a store repair, when its digest failed)."""

    PENDING = "pending"
    AGGREGATED = "aggregated"
    LATE = "late"
    DISCARDED = "discarded"


UPDATE_STATES = tuple(s.value for s in UpdateState)
