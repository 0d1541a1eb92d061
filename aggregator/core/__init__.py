"""The aggregator's sans-IO core: events in, actions out, a snapshot for other threads.

core.py        AggregatorCore: dispatches events, owns the state and the parts below
schedule.py    the clock-driven half: open, step and end rounds at every tick
ingest.py      update chunks to acks: reassembly, checks, the store, the verdict
rounds.py      the RoundDriver interface; plain_round.py and secure_driver.py implement it
versions.py    a finished round becomes a model version
upper.py       a site of an upper tier: hold after K versions, adopt the upper model
models.py      the model at startup, and what a version publishes
state.py, pending.py, snapshot.py, events.py, actions.py: the data that moves
"""

from aggregator.core.actions import (
    Action,
    ClearRetained,
    Publish,
    PublishTask,
    SendAck,
    SiteAggregate,
    Subscribe,
    VersionMade,
    VersionReport,
)
from aggregator.core.core import AggregatorCore
from aggregator.core.events import (
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
    Tick,
    UpdateChunk,
    UpperAsks,
    UpperFinished,
    VerifiedUpdate,
)
from aggregator.core.schedule import STOPPED_NOTE
from aggregator.core.snapshot import ServiceSnapshot

__all__ = ["STOPPED_NOTE", "Action", "AdoptModel", "AggregatorCore", "CanaryMessage",
           "ClearRetained", "Event", "Instant", "LinkDown", "LinkUp", "Publish", "PublishTask",
           "RefusedUpload", "SecAggChunk", "SendAck", "ServiceSnapshot", "SetStrategy",
           "SetTraining", "SiteAggregate", "StatusMessage", "Subscribe", "Tick", "UpdateChunk",
           "UpperAsks", "UpperFinished", "VerifiedUpdate", "VersionMade", "VersionReport"]
