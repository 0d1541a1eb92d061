"""Models a device will not take (issue 18, "Models that change shape"): a manifest over
`max_model_bytes`, or a model its trainer cannot run (another architecture with a layer
it lacks). The device keeps serving the model it holds, says why in its status, and is
not eligible for the refused model's tasks until a model it can run arrives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_client.session.actions import Action, SaveTasks
from edge_client.session.events import Instant
from edge_client.shared.protocol import ModelManifest

if TYPE_CHECKING:
    from edge_client.session.session import DeviceSession


def on_manifest(session: DeviceSession, manifest: ModelManifest, now: Instant) -> list[Action]:
    """Follow a manifest, unless its model is too large for this device."""
    over, actions = session.downlink.on_manifest(manifest)
    if session.downlink.oversized is not None:
        return refused(session, *session.downlink.oversized, now)
    if over:  # forget the old run; unacked updates wait for the new aggregator
        session.maker.forget()
        session.book.forget()
        actions.insert(0, SaveTasks(session.book.done, session.model_version))
    return actions


def refused(session: DeviceSession, version: int, why: str, now: Instant) -> list[Action]:
    """Say once, in the status, that `version` was refused and why."""
    fresh = session.status.refuse(version, why, session.model_version)
    if not (fresh and session.connected):
        return []
    return [session.status.publish(True, session.model_version, now)]
