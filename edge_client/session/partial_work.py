"""Partial work (`partial_work` in the task's train config): what becomes of a fit cut
short, and when the device cuts one short itself, at the task's deadline.

FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127) lets slow devices send
inexact solutions instead of dropping them; the update then counts for the share of
the whole fit it did (UpdateMaker scales its sample count). "off" keeps fedge's old
rule: a fit stopped by the device's eligibility is dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_client.session.events import FitFinished

if TYPE_CHECKING:
    from edge_client.session.participation import Participation, RunningFit
    from edge_client.session.session import DeviceSession

log = logging.getLogger("edge_client.client")  # one logger for all the device says


def deadline_reached(session: DeviceSession, fit: RunningFit, wall: float) -> bool:
    """The running fit is to stop now, `deadline_margin_s` before its task's deadline,
    so that the update it has still arrives in time (once per fit)."""
    task = fit.plan.task
    if fit.at_deadline or task.train.partial_work == "off" or task.deadline is None:
        return False
    if wall < task.deadline - session.config.deadline_margin_s:
        return False
    fit.at_deadline = True
    log.info("%s: task %s: its deadline is %.1f s away; stopping training to send the "
             "partial update", session.me, task.task_id, task.deadline - wall)
    return True


def keep_early_stop(participation: Participation, running: RunningFit,
                    event: FitFinished) -> bool:
    """A fit that stopped early: ours to drop (shutdown, policy unless partial_work is
    "always"), or sent like a shorter fit: the trainer's own stop (a time budget,
    max_batches) and, with partial_work, the task's deadline."""
    s, task = participation.session, running.plan.task
    if event.shutting_down:
        return False
    decision = s.status.decision
    if decision is not None and not decision.eligible:
        reason = decision.reasons[0] if decision.reasons else decision.reason
        s.stats.stopped_mid_training += 1
        if task.train.partial_work != "always" or event.result.batches < 1:
            log.info("%s: task %s: training stopped at a batch boundary: %s; nothing "
                     "sent", s.me, task.task_id, reason)
            participation.skip(task, f"stopped: {reason}")
            return False
        log.info("%s: task %s: training stopped at a batch boundary: %s; sending the "
                 "%d batches done (partial_work = always)", s.me, task.task_id, reason,
                 event.result.batches)
        s.stats.partial_updates += 1
        return True
    if event.result.batches < 1:
        log.info("%s: task %s: the trainer stopped before its first batch%s; nothing sent",
                 s.me, task.task_id, ", at the task's deadline" if running.at_deadline
                 else "")
        participation.skip(task, "stopped: deadline" if running.at_deadline
                           else "stopped: trainer")
        return False
    why = "at the task's deadline" if running.at_deadline else "on its own"
    log.info("%s: task %s: the trainer stopped %s after %d batches; sending what it "
             "learned", s.me, task.task_id, why, event.result.batches)
    s.stats.partial_updates += 1
    return True
