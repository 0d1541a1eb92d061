"""The aggregator's sans-IO core: events in, actions out, a snapshot for other threads.

core.py        AggregatorCore: dispatches events, owns the state and the parts below
schedule.py    the clock-driven half: open, step and end rounds at every tick
ingest.py      update chunks to acks: reassembly, checks, the store, the verdict
rounds.py      the RoundDriver interface; plain_round.py and secure_driver.py implement it
versions.py    a finished round becomes a model version
models.py      the model at startup, and what a version publishes
state.py, pending.py, snapshot.py, events.py, actions.py: the data that moves
"""

from aggregator.core.actions import (
    Action,
    ClearRetained,
    Publish,
    PublishTask,
    SendAck,
    Subscribe,
    VersionMade,
    VersionReport,
)
from aggregator.core.core import AggregatorCore
from aggregator.core.events import (
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
    Tick,
    UpdateChunk,
    VerifiedUpdate,
)
from aggregator.core.schedule import STOPPED_NOTE
from aggregator.core.snapshot import ServiceSnapshot

__all__ = ["STOPPED_NOTE", "Action", "AggregatorCore", "CanaryMessage", "ClearRetained",
           "Event", "Instant",
           "LinkDown", "LinkUp", "Publish", "PublishTask", "RefusedUpload", "SecAggChunk",
           "SendAck",
           "ServiceSnapshot", "SetStrategy", "SetTraining", "StatusMessage", "Subscribe",
           "Tick", "UpdateChunk", "VerifiedUpdate", "VersionMade", "VersionReport"]
