"""From an MQTT message on one of the device's topics to a session event."""

from __future__ import annotations

from dataclasses import dataclass

from edge_client.session.events import (
    AckReceived,
    Event,
    InvitationReceived,
    ManifestReceived,
    ModelChunkReceived,
    RolloutReceived,
    SecAggChunkReceived,
    TaskReceived,
)
from edge_client.session.keys import DeviceKeys
from edge_client.shared.protocol import (
    Ack,
    Invitation,
    ModelManifest,
    Status,
    Task,
    Topics,
    decode,
)
from edge_client.shared.protocol.rollout import decode_rollout
from edge_client.shared.protocol.signing import is_signed, open_envelope


@dataclass(frozen=True)
class OwnStatusReceived:
    """Our own retained status as the broker holds it (to spot a second client)."""

    status: Status


def decode_inbound(topic: str, payload: bytes, topics: Topics, device_id: str,
                   keys: DeviceKeys) -> Event | OwnStatusReceived | None:
    """The event a message stands for; None for a cleared retained message.

    RemoteProtocolError: bytes that do not decode, or a signature that does not hold.
    """
    if not payload:
        return None
    if topic in (topics.model, topics.task, topics.ack(device_id), topics.invite(device_id)):
        payload = keys.from_aggregator(payload)
    if topic == topics.model:
        manifest = decode(payload, expect=ModelManifest)
        assert isinstance(manifest, ModelManifest)
        return ManifestReceived(manifest)
    if topic == topics.task:
        task = decode(payload, expect=Task)
        assert isinstance(task, Task)
        return TaskReceived(task)
    if topic == topics.invite(device_id):
        invitation = decode(payload, expect=Invitation)
        assert isinstance(invitation, Invitation)
        return InvitationReceived(invitation)
    if topic == topics.status(device_id):
        body = open_envelope(payload).body if is_signed(payload) else payload
        status = decode(body, expect=Status)
        assert isinstance(status, Status)
        return OwnStatusReceived(status)
    if topic == topics.ack(device_id):
        ack = decode(payload, expect=Ack)
        assert isinstance(ack, Ack)
        return AckReceived(ack)
    if topic == topics.rollout:
        return RolloutReceived(decode_rollout(keys.from_aggregator(payload)))
    if topic == topics.secagg_to(device_id):
        return SecAggChunkReceived(payload)
    return ModelChunkReceived(topic, payload)
