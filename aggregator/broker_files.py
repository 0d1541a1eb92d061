"""Where the broker's files live and how they are written: modes, the ``mosquitto``
group, atomic replacement, and mosquitto_passwd (see aggregator/broker_config.py for why
each file has its mode)."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BROKER_GROUP = "mosquitto"
MOSQUITTO_PASSWD_FALLBACK = "/usr/bin/mosquitto_passwd"
PUBLIC_MODE = 0o644
SHARED_MODE = 0o640  # read by the broker after it dropped to the mosquitto user
PRIVATE_MODE = 0o600
SHARED_DIR_MODE = 0o750
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class BrokerLayout:
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


def broker_gid() -> int | None:
    try:
        return grp.getgrnam(BROKER_GROUP).gr_gid
    except KeyError:
        return None


def set_mode(path: Path, mode: int) -> None:
    """chmod; if the group may read, chgrp mosquitto (when it exists and we may) as well,
    so the broker can still read the file after dropping privileges (SIGHUP reloads)."""
    gid = broker_gid() if mode & 0o040 else None
    if gid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid)
    os.chmod(path, mode)  # after chown, which may clear bits; and os.open obeys the umask


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace atomically; the file has its final mode before it holds a secret."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    set_mode(tmp, mode)
    os.replace(tmp, path)


def make_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    set_mode(path, mode)


def mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    if Path(MOSQUITTO_PASSWD_FALLBACK).is_file():
        return MOSQUITTO_PASSWD_FALLBACK
    raise RuntimeError("mosquitto_passwd not found: apt-get install mosquitto")


def run_passwd(*args: str) -> None:
    """mosquitto_passwd writes its own hash format; it keeps the file's inode and mode."""
    result = subprocess.run([mosquitto_passwd(), *args], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mosquitto_passwd {args[0]} failed: {result.stderr.strip()}")


def password_users(passwords: Path) -> set[str]:
    lines = passwords.read_text().splitlines()
    return {line.split(":", 1)[0] for line in lines if ":" in line}
