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

import contextlib
import datetime
import grp
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_client.shared.protocol.topics import Topics, check_name

log = logging.getLogger(__name__)

BROKER_GROUP = "mosquitto"
MOSQUITTO_PASSWD_FALLBACK = "/usr/bin/mosquitto_passwd"
CA_DAYS = 3650
LEAF_DAYS = 825
CLOCK_SKEW = datetime.timedelta(minutes=5)
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
PUBLIC_MODE = 0o644
SHARED_MODE = 0o640  # read by the broker after it dropped to the mosquitto user
PRIVATE_MODE = 0o600
SHARED_DIR_MODE = 0o750
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class BrokerSecurityPlan:
    """One federation's broker: its users, and where devices will reach it (the SAN)."""

    federation: str
    devices: tuple[str, ...]
    host: str = "127.0.0.1"  # listener address, and the name put in the server certificate
    port: int = 8883
    mtls: bool = False  # require client certificates (as well as passwords)
    aggregator_user: str = "aggregator"

    def __post_init__(self) -> None:
        check_name("federation", self.federation)
        check_name("aggregator user", self.aggregator_user)
        for device in self.devices:
            check_name("device", device)
        users = [self.aggregator_user, *self.devices]
        if len(set(users)) != len(users):
            raise ValueError("device names and the aggregator user must all differ")


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


@dataclass(frozen=True)
class DeviceAccess:
    """What a newly added device needs to connect."""

    username: str
    password: str = field(repr=False)
    client_cert: tuple[Path, Path] | None = None


@dataclass(frozen=True)
class _Layout:
    """Where each file lives, so writers and updaters agree on names."""

    folder: Path

    @property
    def conf(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def acl(self) -> Path:
        return self.folder / "acl"

    @property
    def passwords(self) -> Path:
        return self.folder / "passwords"

    @property
    def credentials_dir(self) -> Path:
        return self.folder / "credentials"

    @property
    def clients_dir(self) -> Path:
        return self.folder / "clients"

    def credential(self, user: str) -> Path:
        return self.credentials_dir / f"{user}.txt"

    def client_cert(self, user: str) -> tuple[Path, Path]:
        return self.clients_dir / f"{user}.crt", self.clients_dir / f"{user}.key"


# ------------------------------------------------------------------ ACL (pure)
def aggregator_acl_block(federation: str, aggregator_user: str) -> str:
    """The aggregator reads updates and statuses and writes model, task and acks."""
    prefix = Topics(check_name("federation", federation)).prefix
    return f"user {check_name('aggregator user', aggregator_user)}\ntopic readwrite {prefix}/#\n"


def device_acl_block(federation: str, device: str) -> str:
    """Write only its own update, status and secagg messages; read model, task, and its
    own acks and relayed secagg messages."""
    topics = Topics(check_name("federation", federation))
    check_name("device", device)
    lines = [
        f"user {device}",
        f"topic write {topics.update(device)}",
        f"topic readwrite {topics.status(device)}",  # reads its own: a duplicate id shows
        f"topic write {topics.secagg(device)}",
        f"topic read {topics.model}",
        f"topic read {topics.model}/#",
        f"topic read {topics.task}",
        f"topic read {topics.ack(device)}",
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
    return _join_acl(acl_header(federation), blocks)


def _join_acl(header: str, blocks: Sequence[str]) -> str:
    return header + "".join("\n" + block for block in blocks)


def _split_acl(text: str) -> tuple[str, list[str]]:
    """Header and `user` blocks without blank lines, so _join_acl gives acl_text's form."""
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


def _block_user(block: str) -> str:
    return block.split("\n", 1)[0].removeprefix("user ").strip()


# ------------------------------------------------------------------ certificates
def _new_key() -> ec.EllipticCurvePrivateKey:
    """P-256: small, fast on edge CPUs, and supported by every OpenSSL mosquitto builds on."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def make_ca(federation: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign only leaf certificates (path length 0)."""
    key = _new_key()
    subject = f"fedge {federation} CA"
    cert = (_builder(subject, _name(subject), key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def san_entries(host: str) -> list[x509.GeneralName]:
    """The host as an IP or DNS name; local hosts also get localhost, 127.0.0.1 and ::1."""
    names = sorted(LOCAL_NAMES | {host}) if host in LOCAL_NAMES else [host]
    return [_general_name(name) for name in names]


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
               *, server_names: Sequence[x509.GeneralName] = (),
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate when given names for its SAN, else a client certificate."""
    key = _new_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (_builder(common_name, ca_cert.subject, key.public_key(), LEAF_DAYS)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(cert_sign=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                   critical=False))
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(server_names)),
                                        critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(layout: _Layout) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{layout.ca_key} is not an EC key")
    return key, x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())


# ------------------------------------------------------------------ files and permissions
def _broker_gid() -> int | None:
    try:
        return grp.getgrnam(BROKER_GROUP).gr_gid
    except KeyError:
        return None


def _set_mode(path: Path, mode: int) -> None:
    """chmod; if the group may read, chgrp mosquitto (when it exists and we may) as well,
    so the broker can still read the file after dropping privileges (SIGHUP reloads)."""
    gid = _broker_gid() if mode & 0o040 else None
    if gid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid)
    os.chmod(path, mode)  # after chown, which may clear bits; and os.open obeys the umask


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace atomically; the file has its final mode before it holds a secret."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    _set_mode(tmp, mode)
    os.replace(tmp, path)


def _blocked_ancestors(folder: Path) -> list[Path]:
    """Folders above `folder` that the mosquitto user (other, or group mosquitto) cannot pass."""
    gid = _broker_gid()
    blocked = []
    for parent in folder.parents:
        st = parent.stat()
        by_group = gid is not None and st.st_gid == gid and st.st_mode & 0o010
        if not (st.st_mode & 0o001 or by_group):
            blocked.append(parent)
    return blocked


def _warn_if_unreachable(folder: Path) -> None:
    """A root-started broker reads the files as the mosquitto user; say so before it fails."""
    if os.geteuid() != 0 or _broker_gid() is None:
        return
    blocked = _blocked_ancestors(folder)
    if blocked:
        log.warning("broker_config: the mosquitto user cannot enter %s, so a broker started "
                    "as root cannot read %s", ", ".join(map(str, blocked)), folder)


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _set_mode(path, mode)


def _mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    if Path(MOSQUITTO_PASSWD_FALLBACK).is_file():
        return MOSQUITTO_PASSWD_FALLBACK
    raise RuntimeError("mosquitto_passwd not found: apt-get install mosquitto")


def _run_passwd(*args: str) -> None:
    """mosquitto_passwd writes its own hash format; it keeps the file's inode and mode."""
    result = subprocess.run([_mosquitto_passwd(), *args], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mosquitto_passwd {args[0]} failed: {result.stderr.strip()}")


def _password_users(passwords: Path) -> set[str]:
    lines = passwords.read_text().splitlines()
    return {line.split(":", 1)[0] for line in lines if ":" in line}


def _set_password(layout: _Layout, user: str) -> str:
    """A fresh random password, hashed into the password file and kept in credentials/."""
    password = secrets.token_urlsafe(24)
    _run_passwd("-b", str(layout.passwords), user, password)
    _write_file(layout.credential(user), password.encode() + b"\n", PRIVATE_MODE)
    return password


def _issue_client(layout: _Layout, user: str) -> tuple[Path, Path]:
    ca_key, ca_cert = _load_ca(layout)
    key, cert = issue_leaf(ca_key, ca_cert, user)
    cert_path, key_path = layout.client_cert(user)
    _write_file(key_path, _key_pem(key), PRIVATE_MODE)
    _write_file(cert_path, _cert_pem(cert), PUBLIC_MODE)
    return cert_path, key_path


# ------------------------------------------------------------------ mosquitto.conf
def conf_text(plan: BrokerSecurityPlan, layout: _Layout) -> str:
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
        "max_queued_messages 10000",
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


def _mtls_enabled(layout: _Layout) -> bool:
    return "require_certificate true" in layout.conf.read_text().splitlines()


# ------------------------------------------------------------------ public API
def write_broker_config(plan: BrokerSecurityPlan, folder: Path) -> BrokerSecurityFiles:
    """Create CA, server certificate, passwords, ACL and mosquitto.conf in `folder`."""
    layout = _Layout(Path(folder).resolve())
    _make_dir(layout.folder, SHARED_DIR_MODE)
    _make_dir(layout.credentials_dir, PRIVATE_DIR_MODE)
    _warn_if_unreachable(layout.folder)
    ca_key, ca_cert = make_ca(plan.federation)
    server_key, server_cert = issue_leaf(ca_key, ca_cert, plan.host,
                                         server_names=san_entries(plan.host))
    _write_file(layout.ca_key, _key_pem(ca_key), PRIVATE_MODE)
    _write_file(layout.ca_cert, _cert_pem(ca_cert), PUBLIC_MODE)
    _write_file(layout.server_key, _key_pem(server_key), SHARED_MODE)
    _write_file(layout.server_cert, _cert_pem(server_cert), PUBLIC_MODE)
    _write_file(layout.passwords, b"", SHARED_MODE)
    users = (plan.aggregator_user, *plan.devices)
    credentials = {user: _set_password(layout, user) for user in users}
    client_certs: dict[str, tuple[Path, Path]] = {}
    if plan.mtls:
        _make_dir(layout.clients_dir, PRIVATE_DIR_MODE)
        client_certs = {user: _issue_client(layout, user) for user in users}
    _write_file(layout.acl, acl_text(plan.federation, plan.devices, plan.aggregator_user)
                .encode(), SHARED_MODE)
    _write_file(layout.conf, conf_text(plan, layout).encode(), SHARED_MODE)
    return BrokerSecurityFiles(
        folder=layout.folder, conf=layout.conf, ca_cert=layout.ca_cert, ca_key=layout.ca_key,
        server_cert=layout.server_cert, server_key=layout.server_key, acl=layout.acl,
        passwords=layout.passwords, credentials=credentials, client_certs=client_certs)


def _read_acl(layout: _Layout, federation: str) -> tuple[str, list[str]]:
    """The ACL's blocks; refuses a folder made for another federation."""
    header, blocks = _split_acl(layout.acl.read_text())
    marker = f"topic readwrite {Topics(federation).prefix}/#"
    if not any(marker in block.splitlines() for block in blocks):
        raise ValueError(f"{layout.acl} is not the ACL of federation {federation!r}")
    return header, blocks


def _refuse_aggregator(blocks: Sequence[str], device: str) -> None:
    """Turning the aggregator into a device (or deleting it) would stop the federation."""
    if any(_block_user(b) == device and re.search(r"^topic readwrite \S+/#$", b, re.M)
           for b in blocks):
        raise ValueError(f"{device!r} is the aggregator, not a device")


def add_device(folder: Path, federation: str, device: str) -> DeviceAccess:
    """Add a device (or give an existing one a new password); SIGHUP the broker to apply."""
    layout = _Layout(Path(folder).resolve())
    check_name("device", device)
    header, blocks = _read_acl(layout, federation)
    _refuse_aggregator(blocks, device)
    password = _set_password(layout, device)
    client_cert = _issue_client(layout, device) if _mtls_enabled(layout) else None
    blocks = [b for b in blocks if _block_user(b) != device]
    blocks.append(device_acl_block(federation, device))
    _write_file(layout.acl, _join_acl(header, blocks).encode(), SHARED_MODE)
    return DeviceAccess(device, password, client_cert)


def revoke_device(folder: Path, federation: str, device: str) -> None:
    """Remove a device's ACL block, password and stored secrets; SIGHUP the broker to apply.

    Idempotent, so a revoke that failed half way can simply be run again.
    """
    layout = _Layout(Path(folder).resolve())
    check_name("device", device)
    header, blocks = _read_acl(layout, federation)
    _refuse_aggregator(blocks, device)
    kept = [b for b in blocks if _block_user(b) != device]
    _write_file(layout.acl, _join_acl(header, kept).encode(), SHARED_MODE)
    if device in _password_users(layout.passwords):
        _run_passwd("-D", str(layout.passwords), device)
    layout.credential(device).unlink(missing_ok=True)
    for path in layout.client_cert(device):
        path.unlink(missing_ok=True)
