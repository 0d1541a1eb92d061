"""What a device says at INFO: one line per event that matters (connected, eligible or
not and why, a task, training, an update sent, its ack, a model installed) and warnings
for the common mistakes that otherwise look like a silent hang: a federation name that
no aggregator serves, a finished run still on the broker, a second client with the same
device id. The device loop calls it; it only formats, remembers and rate-limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_client.eligibility import Decision
from edge_client.shared.protocol import Ack, AckStatus, Status, Task
from edge_client.shared.protocol.reasons import reason_kind

log = logging.getLogger("edge_client.client")
# The [eligibility] key behind each kind of reason, named in the log so a user who
# disagrees with the device knows what to change (docs/eligibility.md).
SETTING_OF = {"cpu busy": "max_cpu_busy_pct", "load": "max_load_per_cpu",
              "battery": "min_battery_pct", "on battery": "require_charging",
              "metered network": "allow_metered, metered_interfaces",
              "too hot": "max_temp_c", "outside": "windows",
              "holding": "hold_s: conditions must hold this long before training resumes"}
NO_TASK_WARNING_S = 60.0  # connected this long without any task: say so
REPEAT_WARNING_S = 600.0  # a warning that still holds is repeated this often


class DeviceNarrator:
    def __init__(self, device_id: str, federation: str, task_topic: str,
                 clock: Callable[[], float] = time.monotonic,
                 no_task_warning_s: float = NO_TASK_WARNING_S) -> None:
        self.me = device_id
        self.federation = federation
        self.task_topic = task_topic
        self.clock = clock
        self.no_task_warning_s = no_task_warning_s
        self._connected_since: float | None = None
        self._any_task = False
        self._no_task_said: float | None = None
        self._tasks_seen: set[tuple[str, bool]] = set()
        self._duplicate_said: float | None = None
        self._started_wall = time.time()

    # ------------------------------------------------------------ the link
    def started(self, host: str, port: int, state_dir: object, model_version: int | None,
                outbox: int, eligibility: bool, signing: bool) -> None:
        model = f"model version {model_version}" if model_version is not None else "no model yet"
        log.info("%s: federation %r, broker %s:%d, state in %s (%s, %d updates waiting in "
                 "the outbox); eligibility checks %s, signing %s", self.me, self.federation,
                 host, port, state_dir, model, outbox, "on" if eligibility else "off",
                 "on" if signing else "off")

    def connected(self, host: str, port: int) -> None:
        self._connected_since = self.clock()
        log.info("%s: connected to the broker at %s:%d", self.me, host, port)

    def disconnected(self, reason: str) -> None:
        self._connected_since = None
        log.info("%s: disconnected from the broker (%s); reconnecting", self.me, reason)

    def tick(self) -> None:
        """While connected and no task ever came: the federation name is the usual cause."""
        if self._any_task or self._connected_since is None:
            return
        now = self.clock()
        if now - self._connected_since < self.no_task_warning_s:
            return
        if self._no_task_said is not None and now - self._no_task_said < REPEAT_WARNING_S:
            return
        self._no_task_said = now
        log.warning("%s: no task has arrived on %s in %.0f s: is an aggregator serving "
                    "federation %r on this broker? (both sides must use the same "
                    "federation name)", self.me, self.task_topic, now - self._connected_since,
                    self.federation)

    # ------------------------------------------------------------ eligibility
    def eligibility_changed(self, decision: Decision, before: Decision | None) -> None:
        if decision.eligible:
            log.info("%s: eligible to train%s", self.me, "" if before is None else " again")
            return
        hint = SETTING_OF.get(reason_kind(decision.reason))
        log.info("%s: not eligible to train: %s%s", self.me, decision.reason,
                 f" ([eligibility] {hint})" if hint else "")

    # ------------------------------------------------------------ tasks and updates
    def task(self, task: Task, done_here: bool, exit_when_done: bool,
             invited: bool | None = None) -> None:
        """A task message: said once per task id. `invited`: by the task or by an
        Invitation (None: by the task alone)."""
        first = not self._any_task
        self._any_task = True
        if invited is None:
            invited = task.invites(self.me)
        seen = (task.task_id, invited)  # an async task may widen to us
        if seen in self._tasks_seen:
            return
        self._tasks_seen.add(seen)
        if task.done:
            after = ("leaving once that model is here" if exit_when_done
                     else "staying connected for the next run (exit_when_done = false)")
            stale = (" (it had finished before this device saw any of its tasks: an "
                     "earlier run still on the broker?)" if first else "")
            log.info("%s: the aggregator says the federation finished at version %d%s; %s",
                     self.me, task.model_version, stale, after)
        elif done_here:
            log.info("%s: task %s is done here already", self.me, task.task_id)
        elif not invited:
            drawn = (f": not in its cohort ({task.cohort.size} of {task.cohort.candidates} "
                     f"devices drawn)" if task.cohort is not None else "")
            log.info("%s: task %s (round %d): not invited this time%s", self.me,
                     task.task_id, task.round, drawn)
        else:
            log.info("%s: task %s (round %d, model version %d): invited", self.me,
                     task.task_id, task.round, task.model_version)

    def skipped(self, task: Task, reason: str) -> None:
        log.info("%s: task %s: not training now: %s", self.me, task.task_id, reason)

    def training(self, task: Task, samples: int) -> None:
        log.info("%s: task %s: training on %d samples (%d epochs)", self.me, task.task_id,
                 samples, task.train.epochs)

    def sent(self, task: Task, nonce: str, size: int, train_s: float) -> None:
        log.info("%s: task %s: update %s sent, %d bytes (trained in %.2f s)", self.me,
                 task.task_id, nonce[:8], size, train_s)

    def acked(self, ack: Ack) -> None:
        if ack.status is AckStatus.REJECTED:
            log.error("%s: update %s rejected: %s", self.me, ack.nonce[:8], ack.reason)
        else:
            detail = f" ({ack.reason})" if ack.reason else ""
            log.info("%s: update %s %s by the aggregator%s", self.me, ack.nonce[:8],
                     ack.status, detail)

    def model_installed(self, version: int, via_delta: bool, size: int) -> None:
        how = "from a delta" if via_delta else "in full"
        log.info("%s: model version %d installed (%s, %d bytes)", self.me, version, how, size)

    # ------------------------------------------------------------ two clients, one id
    def own_status(self, status: Status, session: str) -> None:
        """Our own retained status, as the broker holds it: one from another session made
        after this run started (an online status, or the last will the broker published
        when the other client's connection was taken over) means a second client runs
        with this device id."""
        if not status.session or status.session == session:
            return
        if status.time < self._started_wall:
            return  # an earlier run of this device (its last status, or its last will)
        now = self.clock()
        if self._duplicate_said is not None and now - self._duplicate_said < REPEAT_WARNING_S:
            return
        self._duplicate_said = now
        log.warning("%s: another client is running with device_id %r (its status names "
                    "session %s, this one is %s): device ids must be unique in a federation; "
                    "the broker disconnects one of the two each time the other connects",
                    self.me, self.me, status.session, session)


def eligibility_kind_changed(decision: Decision, before: Decision | None) -> bool:
    """Changes worth a status and a log line: eligible or not, or the first reason's kind
    (readings such as '55%' move all the time)."""
    return (before is None or decision.eligible != before.eligible
            or reason_kind(decision.reason) != reason_kind(before.reason))
