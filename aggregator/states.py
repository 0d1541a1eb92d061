"""The states the aggregator keeps for tasks and updates (the `state` columns of
aggregator/store.py) and decides for rounds, as Enums whose members are the strings."""

from __future__ import annotations

from edge_client.shared.protocol.states import WireEnum


class TaskState(WireEnum):
    """A round's task: open until its version is made (closed) or it is given up."""

    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


class RoundDue(WireEnum):
    """What an open round (or async buffer) calls for now (aggregator/participation.py)."""

    AGGREGATE = "aggregate"
    WAIT = "wait"
    ABORT = "abort"  # a sync round's deadline passed with too few updates


class UpdateState(WireEnum):
    """A stored update: waiting for its version, used in one, too late, or dropped with
    its aborted round (or by a store repair, when its digest failed)."""

    PENDING = "pending"
    AGGREGATED = "aggregated"
    LATE = "late"
    DISCARDED = "discarded"


UPDATE_STATES = tuple(s.value for s in UpdateState)
