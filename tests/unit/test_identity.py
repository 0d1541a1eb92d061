from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from edge_client.shared import identity as identity_mod
from edge_client.shared.identity import (
    Identity,
    create_identity,
    load_identity,
    load_or_create_identity,
    parse_public_key,
    verify,
)
from fedge.keys_cli import add_keys_parser


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- key files


def test_create_then_load_gives_the_same_identity(tmp_path):
    path = tmp_path / "keys" / "device.pem"
    made = load_or_create_identity(path)
    again = load_or_create_identity(path)
    assert again == made
    assert again.public_bytes == made.public_bytes
    assert load_identity(path).key_id == made.key_id
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_new_key_file_is_0600_and_its_new_folder_0700_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "a" / "b" / "key.pem"
    old = os.umask(umask)
    try:
        load_or_create_identity(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.pem"]  # no temp file left


def test_an_existing_folder_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    load_or_create_identity(tmp_path / "key.pem")
    assert _mode(tmp_path) == 0o755


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused_not_used(tmp_path, mode):
    path = tmp_path / "key.pem"
    load_or_create_identity(path)
    path.chmod(mode)
    before = path.read_bytes()
    for load in (load_identity, load_or_create_identity):
        with pytest.raises(PermissionError, match=r"too open.*chmod 600"):
            load(path)
    assert path.read_bytes() == before


def test_a_read_only_key_file_is_fine(tmp_path):
    path = tmp_path / "key.pem"
    made = load_or_create_identity(path)
    path.chmod(0o400)
    assert load_identity(path) == made


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_a_corrupt_key_file_is_reported_and_never_overwritten(tmp_path, content):
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    path.chmod(0o600)
    for load in (load_identity, load_or_create_identity):
        with pytest.raises(ValueError, match=str(path)):
            load(path)
    assert path.read_bytes() == content


def test_a_key_of_another_type_is_refused(tmp_path):
    path = tmp_path / "key.pem"
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_identity(path)


def test_an_encrypted_key_is_refused_with_a_value_error(tmp_path):
    path = tmp_path / "key.pem"
    pem = Identity.generate().private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ValueError, match=str(path)):
        load_identity(path)


def test_a_folder_in_the_key_s_place_is_refused(tmp_path):
    (tmp_path / "key.pem").mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not a regular file"):
        load_or_create_identity(tmp_path / "key.pem")


def test_load_identity_never_creates(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_identity(tmp_path / "missing.pem")
    assert not (tmp_path / "missing.pem").exists()


def test_create_identity_refuses_an_existing_file(tmp_path):
    path = tmp_path / "key.pem"
    made = create_identity(path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_identity(path)
    assert load_identity(path) == made


def test_a_key_appearing_while_creating_wins_and_is_loaded(tmp_path, monkeypatch):
    path = tmp_path / "key.pem"
    other = Identity.generate()
    real_link = os.link

    def racing_link(src, dst):
        # Another process publishes its key just before we do.
        pem = other.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, pem)
        os.close(fd)
        real_link(src, dst)

    monkeypatch.setattr(identity_mod.os, "link", racing_link)
    assert load_or_create_identity(path) == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_without_hard_links_the_key_is_still_written(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(identity_mod.os, "link", no_links)
    path = tmp_path / "key.pem"
    made = load_or_create_identity(path)
    assert load_identity(path) == made
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


# ---------------------------------------------------------------- identity


def test_key_id_and_public_text():
    ident = Identity.generate()
    assert len(ident.public_bytes) == 32
    assert ident.key_id == hashlib.sha256(ident.public_bytes).hexdigest()[:16]
    assert ident.public_text == "ed25519:" + base64.b64encode(ident.public_bytes).decode()
    assert "\n" not in ident.public_text
    assert parse_public_key(ident.public_text) == ident.public_bytes


def test_the_private_key_is_not_in_the_repr():
    ident = Identity.generate()
    assert "private" not in repr(ident)


def test_mismatched_public_bytes_are_refused():
    with pytest.raises(ValueError):
        Identity(private_key=Identity.generate().private_key,
                 public_bytes=Identity.generate().public_bytes)


def test_parse_public_key_accepts_a_trailing_newline():
    ident = Identity.generate()
    assert parse_public_key(ident.public_text + "\n") == ident.public_bytes


@pytest.mark.parametrize("text", [
    "",
    "ed25519:",
    "AAAA",
    "ssh-ed25519:" + base64.b64encode(bytes(32)).decode(),
    "ED25519:" + base64.b64encode(bytes(32)).decode(),
    "ed25519:" + base64.b64encode(bytes(31)).decode(),
    "ed25519:" + base64.b64encode(bytes(33)).decode(),
    "ed25519:not base64!",
    "ed25519:" + base64.b64encode(bytes(32)).decode()[:-1],  # padding cut
    "ed25519:" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),  # url-safe alphabet
    "ed25519:" + base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-canonical bits
])
def test_parse_public_key_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_public_key(text)


@pytest.mark.parametrize("value", [None, b"ed25519:AAAA", 32])
def test_parse_public_key_refuses_non_text(value):
    with pytest.raises(ValueError):
        parse_public_key(value)


# ---------------------------------------------------------------- sign and verify


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


def test_sign_and_verify():
    ident = Identity.generate()
    sig = ident.sign(b"hello")
    assert len(sig) == 64
    assert verify(ident.public_bytes, b"hello", sig)
    assert verify(bytearray(ident.public_bytes), memoryview(b"hello"), bytearray(sig))


def test_verify_is_false_for_anything_tampered_or_malformed():
    ident = Identity.generate()
    data = b"some message"
    sig = ident.sign(data)
    assert not verify(ident.public_bytes, _flip(data, 3), sig)
    assert not verify(ident.public_bytes, data, _flip(sig, 10))
    assert not verify(ident.public_bytes, data, _flip(sig, 63))
    assert not verify(Identity.generate().public_bytes, data, sig)
    assert not verify(ident.public_bytes, data, sig[:63])
    assert not verify(ident.public_bytes, data, sig + b"\x00")
    assert not verify(ident.public_bytes, data, b"")
    assert not verify(b"\xff" * 32, data, sig)
    assert not verify(b"garbage", data, sig)
    assert not verify(b"", data, sig)


@pytest.mark.parametrize("args", [
    (None, b"x", bytes(64)), ("k" * 32, b"x", bytes(64)), (bytes(32), "x", bytes(64)),
    (bytes(32), 5, bytes(64)), (bytes(32), b"x", None), (bytes(32), b"x", 64),
])
def test_verify_never_raises_on_wrong_types(args):
    assert verify(*args) is False


# ---------------------------------------------------------------- fedge keys


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_keys_create_show_export(tmp_path, capsys):
    path = tmp_path / "keys" / "device.pem"
    assert _run(["keys", "create", "--path", str(path)]) == 0
    created = capsys.readouterr().out
    ident = load_identity(path)
    assert ident.key_id in created and ident.public_text in created

    assert _run(["keys", "show", "--path", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"key_id:      {ident.key_id}" in shown
    assert f"public_key:  {ident.public_text}" in shown
    assert "0600" in shown

    assert _run(["keys", "export", "--path", str(path)]) == 0
    assert capsys.readouterr().out == ident.public_text + "\n"


def test_keys_create_refuses_an_existing_key(tmp_path, capsys):
    path = tmp_path / "device.pem"
    before = create_identity(path)
    assert _run(["keys", "create", "--path", str(path)]) == 2
    captured = capsys.readouterr()
    assert "refusing to overwrite" in captured.err and captured.out == ""
    assert load_identity(path) == before


@pytest.mark.parametrize("action", ["show", "export"])
def test_keys_show_or_export_of_a_missing_file(tmp_path, capsys, action):
    assert _run(["keys", action, "--path", str(tmp_path / "nope.pem")]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'nope.pem'}: No such file or directory" in captured.err
    assert captured.out == ""


def test_keys_show_refuses_a_key_others_can_read(tmp_path, capsys):
    path = tmp_path / "device.pem"
    create_identity(path)
    path.chmod(0o644)
    assert _run(["keys", "show", "--path", str(path)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_keys_export_of_a_corrupt_key(tmp_path, capsys):
    path = tmp_path / "device.pem"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    assert _run(["keys", "export", "--path", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_keys_cli_as_a_process(tmp_path):
    path = tmp_path / "device.pem"
    run = [sys.executable, "-c", "import sys; from fedge.keys_cli import main; sys.exit(main())"]
    made = subprocess.run([*run, "create", "--path", str(path)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    exported = subprocess.run([*run, "export", "--path", str(path)], capture_output=True,
                              text=True)
    assert exported.returncode == 0
    assert parse_public_key(exported.stdout) == load_identity(path).public_bytes
    again = subprocess.run([*run, "create", "--path", str(path)], capture_output=True, text=True)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
