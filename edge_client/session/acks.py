"""An ack from the aggregator: the update leaves the outbox, and with pace steering the
device may go off the broker until its next check-in (a part of DeviceSession, like
resume.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_client.session.actions import Action, RemoveUpdate, SleepUntil
from edge_client.session.events import Instant
from edge_client.shared.protocol import Ack

if TYPE_CHECKING:
    from edge_client.session.session import DeviceSession

log = logging.getLogger("edge_client.client")  # one logger for all the device says


def on_ack(session: DeviceSession, ack: Ack, now: Instant) -> list[Action]:
    if not session.pending.acked(ack.nonce):
        return []  # an ack for an update already cleared (a resend's second ack)
    session.stats.acks[ack.status] += 1
    session.stats.acked.append((ack.nonce, ack.status))
    session.narrator.acked(ack)
    actions: list[Action] = [RemoveUpdate(ack.nonce)]
    if session.config.sleep_between_tasks and ack.next_checkin_s and not len(session.pending):
        log.info("%s: sleeping %.1f s until the next check-in", session.me,
                 ack.next_checkin_s)
        actions.append(session.status.publish(False, session.model_version, now,
                                              f"sleeping {ack.next_checkin_s:.0f} s"))
        session.stats.sleeps += 1
        session.connected = False
        actions.append(SleepUntil(session.pace.sleep(now.monotonic, ack.next_checkin_s)))
    return actions
