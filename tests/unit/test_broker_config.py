"""aggregator.broker_config without a broker: ACL text, files, modes and certificates."""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from aggregator.broker_config import (
    BrokerSecurityFiles,
    BrokerSecurityPlan,
    acl_text,
    add_device,
    revoke_device,
    san_entries,
    write_broker_config,
)
from edge_client.shared.transport import Credentials

FED = "fed"


def _write(folder: Path, *devices: str, **kwargs) -> BrokerSecurityFiles:
    return write_broker_config(BrokerSecurityPlan(FED, devices, **kwargs), folder)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _san(path: Path) -> x509.SubjectAlternativeName:
    return _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _broker_group_applies() -> bool:
    """Files get group mosquitto only when the group exists and we are allowed to chgrp."""
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return False
    return os.geteuid() == 0 or gid in os.getgroups()


# ------------------------------------------------------------------ ACL
def test_acl_text_exact_lines() -> None:
    assert acl_text(FED, ["dev1", "dev2"], "aggregator").splitlines() == [
        "# fedge ACL for federation fed: one block per user.",
        "# Change with aggregator.broker_config add_device/revoke_device, then SIGHUP.",
        "",
        "user aggregator",
        "topic readwrite fedge/fed/#",
        "",
        "user dev1",
        "topic write fedge/fed/update/dev1",
        "topic readwrite fedge/fed/status/dev1",  # its own: a duplicate id shows
        "topic write fedge/fed/secagg/dev1",
        "topic write fedge/fed/canary/dev1",
        "topic read fedge/fed/rollout",
        "topic read fedge/fed/model",
        "topic read fedge/fed/model/#",
        "topic read fedge/fed/task",
        "topic read fedge/fed/ack/dev1",
        "topic read fedge/fed/invite/dev1",
        "topic read fedge/fed/secagg_to/dev1",
        "",
        "user dev2",
        "topic write fedge/fed/update/dev2",
        "topic readwrite fedge/fed/status/dev2",
        "topic write fedge/fed/secagg/dev2",
        "topic write fedge/fed/canary/dev2",
        "topic read fedge/fed/rollout",
        "topic read fedge/fed/model",
        "topic read fedge/fed/model/#",
        "topic read fedge/fed/task",
        "topic read fedge/fed/ack/dev2",
        "topic read fedge/fed/invite/dev2",
        "topic read fedge/fed/secagg_to/dev2",
    ]


@pytest.mark.parametrize("bad", ["a/b", "dev+", "dev#", "two words", "", "x" * 65])
def test_acl_text_rejects_names_that_are_not_one_topic_level(bad: str) -> None:
    with pytest.raises(ValueError):
        acl_text(FED, [bad], "aggregator")
    with pytest.raises(ValueError):
        acl_text(bad, ["dev1"], "aggregator")


def test_plan_rejects_a_device_named_like_the_aggregator() -> None:
    with pytest.raises(ValueError):
        BrokerSecurityPlan(FED, ("aggregator",))
    with pytest.raises(ValueError):
        BrokerSecurityPlan(FED, ("dev1", "dev1"))


# ------------------------------------------------------------------ files
def test_files_and_modes(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", "dev2")
    assert _mode(files.folder) == 0o750
    for shared in (files.conf, files.acl, files.passwords, files.server_key):
        assert _mode(shared) == 0o640, shared
    for public in (files.ca_cert, files.server_cert):
        assert _mode(public) == 0o644, public
    assert _mode(files.ca_key) == 0o600
    assert _mode(files.folder / "credentials") == 0o700
    assert files.client_certs == {}
    assert not (files.folder / "clients").exists()
    if _broker_group_applies():
        gid = grp.getgrnam("mosquitto").gr_gid
        for readable in (files.folder, files.conf, files.acl, files.passwords, files.server_key):
            assert readable.stat().st_gid == gid, readable
    assert not list(files.folder.glob(".*.tmp"))


def test_credentials_are_hashed_for_mosquitto_and_kept_private(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", "dev2")
    assert set(files.credentials) == {"aggregator", "dev1", "dev2"}
    assert len(set(files.credentials.values())) == 3
    lines = files.passwords.read_text().splitlines()
    assert sorted(line.split(":", 1)[0] for line in lines) == ["aggregator", "dev1", "dev2"]
    for line in lines:
        assert line.split(":", 1)[1].startswith("$7$")  # mosquitto 2.0's sha512-pbkdf2
    for user, password in files.credentials.items():
        assert password not in files.passwords.read_text()
        stored = files.folder / "credentials" / f"{user}.txt"
        assert stored.read_text().strip() == password
        assert _mode(stored) == 0o600
    assert files.credentials["dev1"] not in repr(files)


def test_conf_lines(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", port=18883)
    lines = files.conf.read_text().splitlines()
    assert lines.index("per_listener_settings false") < lines.index("allow_anonymous false")
    for line in [
        "listener 18883 127.0.0.1",
        f"cafile {files.ca_cert}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
        "require_certificate false",
        "use_identity_as_username false",
        f"password_file {files.passwords}",
        f"acl_file {files.acl}",
        "max_queued_messages 10000",
        "persistence false",
        "log_dest stderr",
    ]:
        assert line in lines, line
    assert files.acl.read_text() == acl_text(FED, ["dev1"], "aggregator")


# ------------------------------------------------------------------ certificates
def test_server_certificate_san_for_a_local_host(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1")
    san = _san(files.server_cert)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def test_server_certificate_san_for_a_named_gateway(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", host="gateway.lan")
    assert _san(files.server_cert).get_values_for_type(x509.DNSName) == ["gateway.lan"]
    assert "listener 8883 gateway.lan" in files.conf.read_text().splitlines()


def test_san_entries_for_an_ip() -> None:
    assert san_entries("10.0.0.5") == [x509.IPAddress(ipaddress.ip_address("10.0.0.5"))]


def test_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", mtls=True)
    ca = _cert(files.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _cert(files.server_cert)
    server.verify_directly_issued_by(ca)
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert set(files.client_certs) == {"aggregator", "dev1"}
    cert_path, key_path = files.client_certs["dev1"]
    client = _cert(cert_path)
    client.verify_directly_issued_by(ca)
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == client.public_key()
    assert _mode(key_path) == 0o600
    assert _mode(files.folder / "clients") == 0o700
    assert "require_certificate true" in files.conf.read_text().splitlines()


# ------------------------------------------------------------------ add and revoke
def test_add_and_revoke_keep_the_acl_equal_to_acl_text(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", "dev2")
    access = add_device(files.folder, FED, "dev3")
    assert files.acl.read_text() == acl_text(FED, ["dev1", "dev2", "dev3"], "aggregator")
    assert (files.folder / "credentials" / "dev3.txt").read_text().strip() == access.password
    assert access.client_cert is None
    assert access.password not in repr(access)
    revoke_device(files.folder, FED, "dev1")
    assert files.acl.read_text() == acl_text(FED, ["dev2", "dev3"], "aggregator")
    users = [line.split(":")[0] for line in files.passwords.read_text().splitlines()]
    assert sorted(users) == ["aggregator", "dev2", "dev3"]
    assert not (files.folder / "credentials" / "dev1.txt").exists()
    assert _mode(files.acl) == 0o640
    assert _mode(files.passwords) == 0o640
    revoke_device(files.folder, FED, "dev1")  # again: nothing left to do, no error


def test_add_device_rotates_an_existing_password(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1")
    access = add_device(files.folder, FED, "dev1")
    assert access.password != files.credentials["dev1"]
    assert files.acl.read_text() == acl_text(FED, ["dev1"], "aggregator")


def test_add_and_revoke_client_certificates_with_mtls(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1", mtls=True)
    access = add_device(files.folder, FED, "dev2")
    assert access.client_cert is not None
    _cert(access.client_cert[0]).verify_directly_issued_by(_cert(files.ca_cert))
    revoke_device(files.folder, FED, "dev2")
    assert not any(path.exists() for path in access.client_cert)


def test_add_and_revoke_refuse_the_aggregator_and_other_federations(tmp_path: Path) -> None:
    files = _write(tmp_path / "broker", "dev1")
    for change in (add_device, revoke_device):
        with pytest.raises(ValueError, match="aggregator"):
            change(files.folder, FED, "aggregator")
        with pytest.raises(ValueError, match="federation"):
            change(files.folder, "other", "dev1")
    assert files.acl.read_text() == acl_text(FED, ["dev1"], "aggregator")


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root-started broker drops privileges")
def test_warns_when_the_mosquitto_user_cannot_reach_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "private"
    blocked.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="aggregator.broker_config"):
        _write(blocked / "broker", "dev1")
    assert "cannot enter" in caplog.text


def test_transport_credentials_hide_the_password() -> None:
    assert "s3cret" not in repr(Credentials("dev1", "s3cret"))
