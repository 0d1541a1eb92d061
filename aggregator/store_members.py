"""Whom a cohort task invited: the aggregator's own record, never on the wire.

A task that invites by cohort (edge_client/shared/protocol/cohort.py) names no device;
the candidates it counted on are kept here, so no-shows, the waiting line and
`fedge status` still know them after a restart.
"""

from __future__ import annotations

import json
from dataclasses import replace

from aggregator.store_base import Tables
from edge_client.shared.protocol import Task


class TaskMemberTables(Tables):
    def _set_members(self, task: Task) -> None:
        """Called inside the transaction that stores the task. A task id used again
        (v<n>-async after `fedge aggregator recover`) starts afresh."""
        if task.members is None:
            self.db.execute("DELETE FROM task_members WHERE task_id=?", (task.task_id,))
        else:
            self.db.execute("INSERT INTO task_members VALUES (?, ?) ON CONFLICT(task_id) "
                            "DO UPDATE SET members=excluded.members",
                            (task.task_id, json.dumps(list(task.members))))

    def _with_members(self, task: Task) -> Task:
        row = self.db.execute("SELECT members FROM task_members WHERE task_id=?",
                              (task.task_id,)).fetchone()
        return task if row is None else replace(task, members=tuple(json.loads(row[0])))

    def reissue_task(self, task: Task, message: bytes) -> None:
        """The open task widened (async re-invitations): same id, the new invitation."""
        with self._transaction():
            self.db.execute("UPDATE tasks SET message=? WHERE task_id=?",
                            (message, task.task_id))
            self._set_members(task)
