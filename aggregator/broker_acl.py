"""The mosquitto ACL of a federation: one block per user (pure text, no files).

The aggregator reads every update and status and writes model, task, invitations and
acks; a device writes only its own update, status and secagg topics and reads the model,
the task, its own acks and invitation, and its relayed secagg messages.
aggregator/broker_config.py writes the file.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_client.shared.protocol.topics import Topics, check_name


def aggregator_acl_block(federation: str, aggregator_user: str) -> str:
    """The aggregator reads updates and statuses and writes model, task and acks."""
    prefix = Topics(check_name("federation", federation)).prefix
    return f"user {check_name('aggregator user', aggregator_user)}\ntopic readwrite {prefix}/#\n"


def device_acl_block(federation: str, device: str) -> str:
    """Write only its own update, status and secagg messages; read model, task, and its
    own acks, invitations and relayed secagg messages."""
    topics = Topics(check_name("federation", federation))
    check_name("device", device)
    lines = [
        f"user {device}",
        f"topic write {topics.update(device)}",
        f"topic readwrite {topics.status(device)}",  # reads its own: a duplicate id shows
        f"topic write {topics.secagg(device)}",
        f"topic write {topics.prefix}/canary/{device}",  # canary reports (docs/lifecycle.md)
        f"topic read {topics.prefix}/rollout",
        f"topic read {topics.model}",
        f"topic read {topics.model}/#",
        f"topic read {topics.task}",
        f"topic read {topics.ack(device)}",
        f"topic read {topics.invite(device)}",
        f"topic read {topics.secagg_to(device)}",
    ]
    return "\n".join(lines) + "\n"


def acl_header(federation: str) -> str:
    """Comment lines only: with allow_anonymous false there is no anonymous section."""
    return (f"# fedge ACL for federation {federation}: one block per user.\n"
            "# Change with aggregator.broker_config add_device/revoke_device, then SIGHUP.\n")


def acl_text(federation: str, devices: Sequence[str], aggregator_user: str) -> str:
    """The mosquitto acl_file for one federation: the aggregator first, then each device."""
    blocks = [aggregator_acl_block(federation, aggregator_user)]
    blocks += [device_acl_block(federation, device) for device in devices]
    return join_acl(acl_header(federation), blocks)


def join_acl(header: str, blocks: Sequence[str]) -> str:
    return header + "".join("\n" + block for block in blocks)


def split_acl(text: str) -> tuple[str, list[str]]:
    """Header and `user` blocks without blank lines, so join_acl gives acl_text's form."""
    header, blocks = "", []
    for line in (raw + "\n" for raw in text.splitlines()):
        if not line.strip():
            continue
        if line.startswith("user "):
            blocks.append(line)
        elif blocks:
            blocks[-1] += line
        else:
            header += line
    return header, blocks


def block_user(block: str) -> str:
    return block.split("\n", 1)[0].removeprefix("user ").strip()
