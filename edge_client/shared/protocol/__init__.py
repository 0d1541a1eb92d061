"""The wire protocol shared by devices, the aggregator and the firmware bridge.

Depends on numpy, msgpack and the standard library only.
"""

from edge_client.shared.protocol.chunking import DEFAULT_CHUNK_SIZE, Assembler, split
from edge_client.shared.protocol.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from edge_client.shared.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Invitation,
    Model,
    ModelManifest,
    Status,
    Task,
    TrainConfig,
    Update,
    decode,
    encode,
)
from edge_client.shared.protocol.states import AckStatus, RoundMode
from edge_client.shared.protocol.tensors import Weights
from edge_client.shared.protocol.topics import Topics

__all__ = [
    "DEFAULT_CHUNK_SIZE", "PROTOCOL_VERSION", "Ack", "AckStatus", "Assembler", "Invitation",
    "LocalProtocolError", "Model", "ModelManifest", "ProtocolError", "RemoteProtocolError",
    "RoundMode", "Status", "Task", "Topics", "TrainConfig", "Update", "Weights", "decode",
    "encode", "split",
]
