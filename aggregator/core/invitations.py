"""Per-device invitations: the proven devices a plain round names to top its cohort up.

The retained task carries only the cohort (edge_client/shared/protocol/cohort.py), so
its size does not grow with the fleet or the round. A device invited by name besides
gets a retained, signed Invitation on its own topic (`Topics.invite`), published when
the task opens and cleared when the device answers or the round closes. Whom the task
invited stays in the store either way (the task's `members`, aggregator/store_members.py).
"""

from __future__ import annotations

from collections.abc import Callable

from aggregator.core.actions import Action, ClearRetained, Publish, SendAck
from edge_client.shared.protocol import Invitation, Task, Topics, encode


def named_top_ups(task: Task) -> list[str]:
    """The devices `task` invites by Invitation: its members outside its cohort."""
    if task.cohort is None or task.members is None or task.done:
        return []
    return [d for d in task.members if not task.cohort.includes(d)]


class Invitations:
    """The invitations on the broker now: those of the open task, not yet answered."""

    def __init__(self, topics: Topics, sign: Callable[[bytes], bytes]) -> None:
        self.topics = topics
        self.sign = sign
        self.task_id = ""
        self.devices: set[str] = set()

    def resume(self, task: Task) -> None:
        """The open task picked up after a restart: its invitations may still be out."""
        self.task_id, self.devices = task.task_id, set(named_top_ups(task))

    def open(self, task: Task) -> list[Action]:
        """Invite `task`'s named top-ups (published just before the task, so a device
        has its invitation when the task comes)."""
        self.resume(task)
        return self.republish()

    def republish(self) -> list[Action]:
        """Every open invitation again (on reconnect: the broker may have lost them)."""
        return [self._publish(device) for device in sorted(self.devices)]

    def answered(self, actions: list[Action]) -> list[Action]:
        """Clear the invitations of the devices `actions` acknowledge: they answered."""
        if not self.devices:
            return []
        out: list[Action] = []
        for action in actions:
            if not isinstance(action, SendAck):
                continue
            device = action.topic.rsplit("/", 1)[-1]
            if device in self.devices and action.topic == self.topics.ack(device):
                self.devices.discard(device)
                out.append(ClearRetained(self.topics.invite(device)))
        return out

    def close(self) -> list[Action]:
        """The round closed: clear every invitation still out."""
        out: list[Action] = [ClearRetained(self.topics.invite(d)) for d in sorted(self.devices)]
        self.task_id, self.devices = "", set()
        return out

    def _publish(self, device: str) -> Publish:
        message = Invitation(task_id=self.task_id, device_id=device)
        return Publish(self.topics.invite(device), self.sign(encode(message)), retain=True)
