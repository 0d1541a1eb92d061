"""What the aggregator service asks about privacy, in one object.

The service calls the same hooks whatever the mode; with [privacy] mode = "off" each is a
no-op, so service.py needs no branches. The hooks:

- `wrap(strategy)`: the DP wrapper over FedAvg (or a server optimizer); refuses others.
- `admit(task, available)`: before a task opens: its sampling rate, its `dp` field
  (distributed), or a reason to stop because one more version would pass the budget.
- `refuse_resumed(task)`: the same checks for a task still open at a restart.
- `check_update(update)`: distributed mode refuses updates sent without the device's DP,
  or with NaN or inf values.
- `commit(task_id)`: after a version is made: the accountant's step and epsilon, and the
  next clip, as fields for the version's info.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.privacy.accountant import Accountant, Step
from aggregator.privacy.config import expected_cohort
from aggregator.privacy.dp_strategy import CentralDp, DistributedDp, DpRound, DpState
from aggregator.store import Store
from aggregator.store_check import DROPPED_DP_NOTE
from aggregator.strategy.base import Strategy
from aggregator.strategy.registry import is_mean_based
from edge_client.shared.codecs.dp import CLIP_METRIC, NOISE_METRIC, DeviceDp
from edge_client.shared.protocol import RemoteProtocolError, Task, Update

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig

log = logging.getLogger(__name__)
RATE_NOTE = "privacy/rate"  # the open sync task's id and planned sampling rate
SUMMARY_NOTE = "privacy"  # the settings, for the dashboard (which has no config)


class ServicePrivacy:
    def __init__(self, config: AggregatorConfig, store: Store) -> None:
        self.config = config.privacy
        self.mode = config.privacy.mode
        self.store = store
        self.cohort = expected_cohort(config)
        self.min_updates = max(1, math.ceil(config.sync.min_fraction * self.cohort)) \
            if config.mode == "sync" else self.cohort
        history = store.model_history()
        latest = history[-1] if history else None
        # An adaptive clip goes on from where it was; a fixed one is the configured value,
        # which may have changed since the last version.
        resumed = latest.metric("dp_next_clip") if latest and self.config.adaptive else None
        self.state = DpState(clip=float(resumed or self.config.start_clip),
                             version=(latest.version if latest else 0) + 1)
        self.delta = self.config.resolved_delta()
        dropped = store.note(DROPPED_DP_NOTE) or []  # versions `recover` dropped
        self.accountant = Accountant.from_history(
            [*dropped, *(h.to_json() for h in history)], self.delta)
        store.set_note(SUMMARY_NOTE, self.summary() if self.enabled else None)
        if self.enabled and self.config.seed is not None:
            log.warning("privacy: the noise is seeded from [privacy] seed: anyone who knows "
                        "it can redraw and remove the noise; leave it out in production")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {"mode": self.mode, "delta": self.delta, "target_epsilon": c.target_epsilon,
                "noise_multiplier": c.noise_multiplier,
                "clip": c.clip if isinstance(c.clip, str) else float(c.clip),
                "population": c.population, "cohort": self.cohort}

    # ------------------------------------------------------------ strategy
    def wrap(self, strategy: Strategy) -> Strategy:
        """The private version of `strategy`; ValueError for one DP cannot wrap."""
        if not self.enabled:
            return strategy
        if not is_mean_based(strategy):
            raise ValueError(f"privacy mode {self.mode!r} works with fedavg and the server "
                             f"optimizers only, not {strategy!r}: the noise is calibrated to "
                             f"the clipped mean")
        wrapper = CentralDp if self.mode == "central" else DistributedDp
        return wrapper(strategy, self.config, self.cohort, self.state)

    # ------------------------------------------------------------ tasks and budget
    def admit(self, task: Task, available: int) -> tuple[Task, str | None]:
        """The task to publish, or a reason to stop training instead."""
        if not self.enabled:
            return task, None
        rate = self.sampling_rate(task, available)
        target = self.config.target_epsilon
        if target > 0:
            after = self.accountant.epsilon_after(Step(rate, self._planned_multiplier()))
            if after > target:
                return task, (f"privacy budget: one more version would reach epsilon "
                              f"{after:.3f} > target_epsilon {target:g} at delta "
                              f"{self.delta:g} (now {self.accountant.epsilon():.3f})")
        if task.mode == "sync":
            self.store.set_note(RATE_NOTE, {"task_id": task.task_id, "rate": rate})
        if self.mode == "distributed":
            dp = self._device_dp().to_wire()
            task = dataclasses.replace(task, dp=dp)
        return task, None

    def refuse_resumed(self, task: Task) -> str | None:
        """Why an open task from before a restart must not go on under the settings the
        aggregator now has, or None: its version would pass the budget (with the rate it
        was opened with), or, in distributed mode, it asked devices for other DP (its
        updates would carry the wrong noise, or none). `admit` never saw it."""
        if not self.enabled:
            return None
        if self.mode == "distributed":
            try:
                asked = DeviceDp.from_wire(task.dp) if task.dp is not None else None
            except RemoteProtocolError:
                asked = None
            if asked != self._device_dp():
                return "it asks devices for other DP than [privacy] now sets"
        target = self.config.target_epsilon
        if target > 0:
            step = Step(self._rate_of(task.task_id), self._planned_multiplier())
            if self.accountant.epsilon_after(step) > target:
                return f"its version would take epsilon past target_epsilon {target:g}"
        return None

    def sampling_rate(self, task: Task, available: int) -> float:
        """q: the chance a device is in this task's cohort.

        Sync: invited / population ([privacy] population, else the devices that could be
        invited just then: a device that is always available is picked that often, not
        as rarely as invited / all devices ever seen). Async: 1, because devices, not a
        random draw, decide when they take part.
        """
        invited = task.invited_count()
        if task.mode != "sync" or invited is None:
            return 1.0
        pool = self.config.population or available
        return min(1.0, invited / pool) if pool > 0 else 1.0

    def _planned_multiplier(self) -> float:
        """z for the budget check: in distributed mode as if only the fewest updates that
        still make a version came (each brings 1/m of the noise)."""
        z = self.config.noise_multiplier
        if self.mode == "distributed":
            return z * math.sqrt(self.min_updates / self.cohort)
        return z

    def _device_dp(self) -> DeviceDp:
        return DeviceDp.share(self.state.clip, self.config.noise_multiplier, self.cohort)

    # ------------------------------------------------------------ updates
    def check_update(self, update: Update) -> None:
        """Distributed mode: the update must say it was clipped and noised as asked."""
        if self.mode != "distributed":
            return
        want = self._device_dp()
        got = (update.metrics.get(CLIP_METRIC), update.metrics.get(NOISE_METRIC))
        if got[0] is None or got[1] is None:
            raise RemoteProtocolError("the task asks for distributed DP and the update does "
                                      "not carry it (dp_clip, dp_noise_std)")
        if not (math.isclose(got[0], want.clip, rel_tol=1e-6)
                and math.isclose(got[1], want.noise_std, rel_tol=1e-6)):
            raise RemoteProtocolError(f"the update's DP (clip {got[0]:g}, noise std "
                                      f"{got[1]:g}) is not the task's (clip {want.clip:g}, "
                                      f"noise std {want.noise_std:g})")
        # The strategy would drop it, and the version would carry fewer noise shares than
        # the budget check assumed (the round's minimum of updates).
        if not all(np.isfinite(t).all() for t in update.tensors.values()):
            raise RemoteProtocolError("the update has NaN or inf values: its noise share "
                                      "cannot be used")

    # ------------------------------------------------------------ versions
    def commit(self, task_id: str) -> dict[str, Any]:
        """After a version is made: its accounting, as fields of the version's info."""
        if not self.enabled:
            return {}
        last = self.state.last
        if last is None:
            raise RuntimeError("privacy: a version was made without the DP wrapper")
        rate = self._rate_of(task_id)
        z = self._multiplier(last)
        eps = self.accountant.record(Step(rate, z))
        self.state.clip = last.next_clip
        self.state.version += 1
        self.state.last = None
        return {"epsilon": eps, "dp_delta": self.delta, "dp_mode": self.mode,
                "dp_sampling_rate": rate, "dp_noise_multiplier": z, "dp_clip": last.clip,
                "dp_next_clip": last.next_clip, "dp_clipped": len(last.clipped),
                "dp_noise_std": last.noise_std}

    def clipped(self) -> dict[str, float]:
        """Devices the last private aggregation clipped, with their norms (before commit)."""
        last = self.state.last
        return {} if last is None else dict(last.clipped)

    def _rate_of(self, task_id: str) -> float:
        """The planned rate; 1 (no amplification claimed) when not known, e.g. a sync
        task opened by an aggregator without privacy, or an async one."""
        note = self.store.note(RATE_NOTE)
        if not isinstance(note, dict) or note.get("task_id") != task_id:
            return 1.0
        rate = note.get("rate")
        return float(rate) if isinstance(rate, int | float) and 0 < rate <= 1 else 1.0

    def _multiplier(self, last: DpRound) -> float:
        """z as the accountant sees it: central adds z C / m itself; in distributed mode k
        devices bring sqrt(k / m) of the noise, so z shrinks when fewer than m came."""
        z = self.config.noise_multiplier
        if self.mode == "distributed":
            return z * math.sqrt(min(last.devices, self.cohort) / self.cohort)
        return z
