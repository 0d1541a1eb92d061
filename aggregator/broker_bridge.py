"""A site broker's bridge to the upper tier's broker (docs/tiers.md): pure text.

A site's uplink is one device of the upper federation named after the site. Bridged, it
connects to its own site broker, and the site's mosquitto carries exactly that device's
topics to and from the upper broker: the site's update, status and secagg messages out;
the upper model, task, and the site's own acks, invitation and relayed secagg messages
in. On the upper broker the bridge logs in as the site (`remote_username`), with the
password and ACL `fedge aggregator broker-config --devices <sites>` made for the upper
federation there: a site can write only its own topics, as any device.

Settings that matter (mosquitto 2.0): QoS 1 both ways and `cleansession false`, so what
either side publishes while the bridge is down waits in the other's queue;
`try_private true`, so the upper broker knows it talks to a bridge and keeps retained flags
(the model and task are retained); `restart_timeout` short, so a site rejoins quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_client.shared.protocol.topics import Topics, check_name


@dataclass(frozen=True)
class BridgePlan:
    site: str  # the site's name upstairs: its uplink's device id and bridge user
    federation: str  # the upper tier's federation
    host: str  # the upper broker
    port: int
    password: str | None = None  # the site's password on the upper broker
    ca_file: Path | None = None  # the upper broker's CA: TLS on the bridge

    def __post_init__(self) -> None:
        check_name("site", self.site)
        check_name("federation", self.federation)
        if not 0 < self.port < 65536:
            raise ValueError(f"the upper broker's port must be 1 to 65535, not {self.port}")
        if self.password is not None and any(c in self.password for c in "\r\n"):
            raise ValueError("the bridge password may not hold a line break")


def bridge_topics(federation: str, site: str) -> list[tuple[str, str]]:
    """(topic, direction) for the bridge: what the site's uplink publishes goes out,
    what the upper aggregator publishes for it comes in."""
    t = Topics(federation)
    return [(t.update(site), "out"), (t.secagg(site), "out"), (t.status(site), "both"),
            (t.model, "in"), (f"{t.model}/#", "in"), (t.task, "in"), (t.ack(site), "in"),
            (t.invite(site), "in"), (t.secagg_to(site), "in")]


def bridge_section(plan: BridgePlan) -> str:
    """The mosquitto.conf lines of one bridge, to append to (or include in) the site
    broker's config."""
    lines = [f"# fedge: site {plan.site} of federation {plan.federation} (docs/tiers.md)",
             f"connection fedge-{plan.site}",
             f"address {plan.host}:{plan.port}",
             f"remote_clientid fedge-bridge-{plan.site}",
             "bridge_protocol_version mqttv311",
             "try_private true",
             "cleansession false",
             "restart_timeout 1 10",
             "notifications false"]
    if plan.password is not None:
        lines += [f"remote_username {plan.site}", f"remote_password {plan.password}"]
    if plan.ca_file is not None:
        lines.append(f"bridge_cafile {plan.ca_file}")
    lines += [f"topic {topic} {direction} 1" for topic, direction in
              bridge_topics(plan.federation, plan.site)]
    return "\n".join(lines) + "\n"
