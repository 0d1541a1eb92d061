"""Generate a gateway's mosquitto security setup: TLS, one password per device, a per-device ACL.

A broker is shared ground, so every device authenticates and may publish only its own
update and status topics and read only the model and task topics and its own acks; the
aggregator reads every update and status and writes model, task and acks.

Decisions (mosquitto 2.0):

* **Files and the ``mosquitto`` user.** Started as root, mosquitto 2.0.11 reads only its
  config as root: it drops to the ``mosquitto`` user *before* it loads the server key, the
  password file and the ACL (a 0600 root-owned key fails with "Unable to load server key
  file"), and SIGHUP re-reads them as that user too. So the folder is 0750, the config,
  password file, ACL and server key 0640, and the certificates 0644, all with group
  ``mosquitto`` (when that group exists and we may chgrp). Only the CA key (the broker
  never needs it), client keys and generated passwords are 0600, in 0700 folders. Every
  folder *above* ours must let the ``mosquitto`` user through (e.g. /etc/fedge, or a fresh
  folder under /tmp; not pytest's 0700 tmp_path); we log a warning when one does not. We
  do not write ``user root``: the same files then work when systemd runs mosquitto as the
  ``mosquitto`` user, and a root-started broker keeps dropping its privileges. Started by
  a non-root user, mosquitto does not switch users and reads the files as their owner.
* **mTLS keeps passwords.** With ``mtls`` a client needs a certificate from our CA *and* its
  password; ``use_identity_as_username`` is off. With that option mosquitto ignores the
  password file, so ``revoke_device`` would need a CRL: every certificate the CA ever
  signed would still get in. The price: mosquitto does not tie a certificate to a user, so
  the certificate proves "one of ours" and the password says which one.
* **No persistence.** The aggregator republishes the retained model and task on every
  connect and devices republish their status, so nothing needs a folder the broker can
  write, and nothing retained by a revoked device survives a restart.
* **Reload.** ``add_device`` and ``revoke_device`` only change files; send the broker
  SIGHUP (``kill -HUP <pid>`` or ``systemctl reload mosquitto``) to apply them. mosquitto
  2.0 then disconnects the connected clients of a deleted user as well. A revoked device's
  *retained* status stays on the broker and is still delivered to new subscribers (seen
  with 2.0.11 despite ``check_retain_source``); the aggregator clears it with an empty
  retained publish if it matters.
* **mosquitto_passwd -b** puts the password on a command line for a moment (visible in
  ``ps`` to other local users); acceptable on a single-purpose gateway.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aggregator.broker_acl import (
    acl_text,
    block_user,
    device_acl_block,
    join_acl,
    split_acl,
)
from aggregator.broker_certs import cert_pem, issue_leaf, key_pem, make_ca, san_entries
from aggregator.broker_files import (
    PRIVATE_DIR_MODE,
    PRIVATE_MODE,
    PUBLIC_MODE,
    SHARED_DIR_MODE,
    SHARED_MODE,
    BrokerLayout,
    broker_gid,
    make_dir,
    password_users,
    run_passwd,
    write_file,
)
from aggregator.broker_sizing import FleetSize, broker_settings, systemd_drop_in
from edge_client.shared.protocol.topics import Topics, check_name

log = logging.getLogger(__name__)
DROP_IN_NAME = "fedge-fleet.conf"  # the systemd drop-in for mosquitto (broker_sizing.py)

__all__ = ["BrokerSecurityFiles", "BrokerSecurityPlan", "DeviceAccess", "acl_text",
           "add_device", "device_acl_block", "revoke_device", "san_entries",
           "write_broker_config"]


@dataclass(frozen=True)
class BrokerSecurityPlan:
    """One federation's broker: its users, and where devices will reach it (the SAN)."""

    federation: str
    devices: tuple[str, ...]
    host: str = "127.0.0.1"  # listener address, and the name put in the server certificate
    port: int = 8883
    mtls: bool = False  # require client certificates (as well as passwords)
    aggregator_user: str = "aggregator"
    fleet: FleetSize | None = None  # None: sized for the devices listed

    def __post_init__(self) -> None:
        check_name("federation", self.federation)
        check_name("aggregator user", self.aggregator_user)
        for device in self.devices:
            check_name("device", device)
        users = [self.aggregator_user, *self.devices]
        if len(set(users)) != len(users):
            raise ValueError("device names and the aggregator user must all differ")

    @property
    def size(self) -> FleetSize:
        return self.fleet or FleetSize(max(1, len(self.devices)))


@dataclass(frozen=True)
class BrokerSecurityFiles:
    """What write_broker_config made; hand each party its password (and certificate)."""

    folder: Path
    conf: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    acl: Path
    passwords: Path
    credentials: dict[str, str] = field(repr=False)  # username -> generated password
    client_certs: dict[str, tuple[Path, Path]]  # username -> (cert, key) when mtls
    drop_in: Path | None = None  # mosquitto's systemd drop-in with LimitNOFILE


@dataclass(frozen=True)
class DeviceAccess:
    """What a newly added device needs to connect."""

    username: str
    password: str = field(repr=False)
    client_cert: tuple[Path, Path] | None = None


def _load_ca(layout: BrokerLayout) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{layout.ca_key} is not an EC key")
    return key, x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())


# ------------------------------------------------------------------ files and permissions
def _blocked_ancestors(folder: Path) -> list[Path]:
    """Folders above `folder` that the mosquitto user (other, or group mosquitto) cannot pass."""
    gid = broker_gid()
    blocked = []
    for parent in folder.parents:
        st = parent.stat()
        by_group = gid is not None and st.st_gid == gid and st.st_mode & 0o010
        if not (st.st_mode & 0o001 or by_group):
            blocked.append(parent)
    return blocked


def _warn_if_unreachable(folder: Path) -> None:
    """A root-started broker reads the files as the mosquitto user; say so before it fails."""
    if os.geteuid() != 0 or broker_gid() is None:
        return
    blocked = _blocked_ancestors(folder)
    if blocked:
        log.warning("broker_config: the mosquitto user cannot enter %s, so a broker started "
                    "as root cannot read %s", ", ".join(map(str, blocked)), folder)


def _set_password(layout: BrokerLayout, user: str) -> str:
    """A fresh random password, hashed into the password file and kept in credentials/."""
    password = secrets.token_urlsafe(24)
    run_passwd("-b", str(layout.passwords), user, password)
    write_file(layout.credential(user), password.encode() + b"\n", PRIVATE_MODE)
    return password


def _issue_client(layout: BrokerLayout, user: str) -> tuple[Path, Path]:
    ca_key, ca_cert = _load_ca(layout)
    key, cert = issue_leaf(ca_key, ca_cert, user)
    cert_path, key_path = layout.client_cert(user)
    write_file(key_path, key_pem(key), PRIVATE_MODE)
    write_file(cert_path, cert_pem(cert), PUBLIC_MODE)
    return cert_path, key_path


# ------------------------------------------------------------------ mosquitto.conf
def conf_text(plan: BrokerSecurityPlan, layout: BrokerLayout) -> str:
    """One TLS listener; passwords and ACL apply to every listener (per_listener_settings false)."""
    return "\n".join([
        f"# fedge broker for federation {plan.federation}, generated by "
        "aggregator.broker_config.",
        "# Reload passwords and ACL after add_device/revoke_device with SIGHUP.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {layout.passwords.resolve()}",
        f"acl_file {layout.acl.resolve()}",
        "persistence false",
        *broker_settings(plan.size),
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "",
        f"listener {plan.port} {plan.host}",
        f"cafile {layout.ca_cert.resolve()}",
        f"certfile {layout.server_cert.resolve()}",
        f"keyfile {layout.server_key.resolve()}",
        f"require_certificate {'true' if plan.mtls else 'false'}",
        "use_identity_as_username false",
        "",
    ])


def _mtls_enabled(layout: BrokerLayout) -> bool:
    return "require_certificate true" in layout.conf.read_text().splitlines()


# ------------------------------------------------------------------ public API
def write_broker_config(plan: BrokerSecurityPlan, folder: Path) -> BrokerSecurityFiles:
    """Create CA, server certificate, passwords, ACL and mosquitto.conf in `folder`."""
    layout = BrokerLayout(Path(folder).resolve())
    make_dir(layout.folder, SHARED_DIR_MODE)
    make_dir(layout.credentials_dir, PRIVATE_DIR_MODE)
    _warn_if_unreachable(layout.folder)
    ca_key, ca_cert = make_ca(plan.federation)
    server_key, server_cert = issue_leaf(ca_key, ca_cert, plan.host,
                                         server_names=san_entries(plan.host))
    write_file(layout.ca_key, key_pem(ca_key), PRIVATE_MODE)
    write_file(layout.ca_cert, cert_pem(ca_cert), PUBLIC_MODE)
    write_file(layout.server_key, key_pem(server_key), SHARED_MODE)
    write_file(layout.server_cert, cert_pem(server_cert), PUBLIC_MODE)
    write_file(layout.passwords, b"", SHARED_MODE)
    users = (plan.aggregator_user, *plan.devices)
    credentials = {user: _set_password(layout, user) for user in users}
    client_certs: dict[str, tuple[Path, Path]] = {}
    if plan.mtls:
        make_dir(layout.clients_dir, PRIVATE_DIR_MODE)
        client_certs = {user: _issue_client(layout, user) for user in users}
    write_file(layout.acl, acl_text(plan.federation, plan.devices, plan.aggregator_user)
                .encode(), SHARED_MODE)
    write_file(layout.conf, conf_text(plan, layout).encode(), SHARED_MODE)
    drop_in = layout.folder / DROP_IN_NAME
    write_file(drop_in, systemd_drop_in(plan.size).encode(), PUBLIC_MODE)
    return BrokerSecurityFiles(
        folder=layout.folder, conf=layout.conf, ca_cert=layout.ca_cert, ca_key=layout.ca_key,
        server_cert=layout.server_cert, server_key=layout.server_key, acl=layout.acl,
        passwords=layout.passwords, credentials=credentials, client_certs=client_certs,
        drop_in=drop_in)


def _read_acl(layout: BrokerLayout, federation: str) -> tuple[str, list[str]]:
    """The ACL's blocks; refuses a folder made for another federation."""
    header, blocks = split_acl(layout.acl.read_text())
    marker = f"topic readwrite {Topics(federation).prefix}/#"
    if not any(marker in block.splitlines() for block in blocks):
        raise ValueError(f"{layout.acl} is not the ACL of federation {federation!r}")
    return header, blocks


def _refuse_aggregator(blocks: Sequence[str], device: str) -> None:
    """Turning the aggregator into a device (or deleting it) would stop the federation."""
    if any(block_user(b) == device and re.search(r"^topic readwrite \S+/#$", b, re.M)
           for b in blocks):
        raise ValueError(f"{device!r} is the aggregator, not a device")


def add_device(folder: Path, federation: str, device: str) -> DeviceAccess:
    """Add a device (or give an existing one a new password); SIGHUP the broker to apply."""
    layout = BrokerLayout(Path(folder).resolve())
    check_name("device", device)
    header, blocks = _read_acl(layout, federation)
    _refuse_aggregator(blocks, device)
    password = _set_password(layout, device)
    client_cert = _issue_client(layout, device) if _mtls_enabled(layout) else None
    blocks = [b for b in blocks if block_user(b) != device]
    blocks.append(device_acl_block(federation, device))
    write_file(layout.acl, join_acl(header, blocks).encode(), SHARED_MODE)
    return DeviceAccess(device, password, client_cert)


def revoke_device(folder: Path, federation: str, device: str) -> None:
    """Remove a device's ACL block, password and stored secrets; SIGHUP the broker to apply.

    Idempotent, so a revoke that failed half way can simply be run again.
    """
    layout = BrokerLayout(Path(folder).resolve())
    check_name("device", device)
    header, blocks = _read_acl(layout, federation)
    _refuse_aggregator(blocks, device)
    kept = [b for b in blocks if block_user(b) != device]
    write_file(layout.acl, join_acl(header, kept).encode(), SHARED_MODE)
    if device in password_users(layout.passwords):
        run_passwd("-D", str(layout.passwords), device)
    layout.credential(device).unlink(missing_ok=True)
    for path in layout.client_cert(device):
        path.unlink(missing_ok=True)
