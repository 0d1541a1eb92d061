"""Picking up after a reboot: the last model, the tasks already done, the unacked updates.

What the device kept on disk (edge_client/device_state.py, the outbox) comes back as one
Resumed event; this puts it into the session's parts and says which outbox entries could
not be read, so the shell sets them aside instead of failing on them at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_client.session.actions import Action, SetAsideUpdate
from edge_client.session.events import Resumed
from edge_client.session.resend import read_outbox

if TYPE_CHECKING:
    from edge_client.session.session import DeviceSession


def resume(session: DeviceSession, state: Resumed) -> list[Action]:
    """Restore `session` from `state`; the actions set unreadable outbox entries aside."""
    session.book.resume(state.done_tasks)
    session.downlink.model = state.model
    if state.model is not None:
        session.maker.resume(state.residual)
    readable, unreadable = read_outbox(state.outbox)
    for entry, task_id in readable:
        session.pending.add(entry.nonce, entry.payload)
        session.book.mark_done(task_id)  # answered before the reboot: its update is here
    served = session.serving.resumed(state.model, state.following)
    return served + [SetAsideUpdate(nonce, why) for nonce, why in unreadable]
