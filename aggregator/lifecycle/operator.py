"""Operators' commands (CLI, REST API, dashboard): queued in the store by whoever asks,
applied here on the service's loop, each recorded in the audit trail with who asked.

    promote N    serve N now (a copy of N when N is not the newest version); unpins
    rollback N   serve N again: production and any open candidate are rolled back (N being
                 production: only the open candidate is, a "reject"); training goes on
                 from a copy of N, as after the rule's rollback
    pin N        serve N and promote nothing automatically until the next `promote`
"""

from __future__ import annotations

import logging

from aggregator.core.actions import Action
from aggregator.core.events import Instant
from aggregator.lifecycle.rollout import PIN_NOTE, Lifecycle
from aggregator.lifecycle.stages import Command, Stage, StageRequest

log = logging.getLogger("aggregator.service")
POLL_S = 0.5  # how often the loop looks for queued commands


def apply_waiting(life: Lifecycle, latest: int, at: Instant) -> list[Action]:
    """Apply every queued command, in order; each gets its outcome in the store."""
    out: list[Action] = []
    for request in life.store.waiting_stage_requests():
        refused = refusal(life, request, latest)
        if refused is not None:
            log.warning("aggregator: refused %s %d asked by %s: %s", request.command.value,
                        request.version, request.actor, refused)
            life.store.finish_stage_request(request.id, f"refused: {refused}")
            continue
        actions, latest = apply(life, request, latest, at)
        out += actions
        life.store.finish_stage_request(request.id, "done")
    return out


def refusal(life: Lifecycle, request: StageRequest, latest: int) -> str | None:
    version = request.version
    stage = life.store.stage_of(version)
    if stage is None or version > latest:
        return f"there is no version {version}"
    if request.command is Command.ROLLBACK and version == life.production() and (
            life.canary is None):
        return f"version {version} is production already (and no candidate is open)"
    if stage is Stage.ROLLED_BACK and request.command is not Command.ROLLBACK:
        return f"version {version} was rolled back; `rollback --to {version}` serves it again"
    return None


def apply(life: Lifecycle, request: StageRequest, latest: int,
          at: Instant) -> tuple[list[Action], int]:
    """One command; the actions and the newest version after it."""
    actor = f"operator:{request.actor}"
    command, version = request.command, request.version
    log.info("aggregator: %s asked to %s version %d", actor, command.value, version)
    if command is Command.PIN:
        life.store.set_note(PIN_NOTE, version)
    elif command is Command.PROMOTE:
        life.store.set_note(PIN_NOTE, None)
    canary = life.canary
    if canary is not None:
        promoted = command is not Command.ROLLBACK and canary.candidate == version
        life.end_canary(Stage.PRODUCTION if promoted else (
            Stage.ROLLED_BACK if command is Command.ROLLBACK else Stage.RETIRED), actor,
            f"{command.value} {version} by the operator")
        if promoted:
            return life.rollout_message(), latest
    if command is Command.ROLLBACK:
        production = life.production()
        if production is not None and production != version:  # else: a reject
            life.set(production, Stage.ROLLED_BACK, actor,
                     f"the operator rolled back to version {version}")
    if version == latest and life.store.stage_of(version) is not Stage.ROLLED_BACK:
        life.set(version, Stage.PRODUCTION, actor, f"{command.value} by the operator")
        return life.rollout_message(), latest
    out = life.copy_to_production(version, at, actor, f"{command.value} by the operator")
    return out, latest + 1
