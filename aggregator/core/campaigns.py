"""What a retraining campaign (aggregator/drift.py) does to the core's plan: more
versions to make, and a finished federation training again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aggregator.core.state import CoreState
from aggregator.drift import Campaign
from aggregator.status import FINISHED_NOTE
from aggregator.store import Store
from edge_client.shared.protocol import Status

if TYPE_CHECKING:
    from aggregator.core.core import AggregatorCore

log = logging.getLogger("aggregator.service")


def watch_drift(core: AggregatorCore, status: Status, wall: float) -> None:
    """Give the rule one checked status; open the campaign it may decide on. Only devices
    with a track record count: in plain mode anyone may publish a status under any id,
    and made-up devices must not open campaigns (aggregator/presence.py)."""
    if status.device_id not in core.presence.proven:
        return
    state = core.state
    campaign = core.drift.on_status(status, wall, state.version, state.rounds, state.stopped)
    if campaign is not None:
        open_campaign(campaign, state, core.store)


def open_campaign(campaign: Campaign, state: CoreState, store: Store) -> None:
    """Extend the plan to the campaign's last version; a finished federation opens its
    next round at the following tick (devices still connected take it)."""
    if campaign.until_version is None:
        return  # no last version: training goes on anyway
    was_finished = state.finished
    state.rounds = max(state.rounds, campaign.until_version)
    if was_finished and not state.finished:
        state.done_published = False
        store.set_note(FINISHED_NOTE, None)
        log.info("aggregator: training resumes for retraining campaign %d (it had "
                 "finished at version %d)", campaign.number, state.version)
    if state.paused:
        log.info("aggregator: training is paused; campaign %d's rounds start when the "
                 "operator resumes it", campaign.number)
