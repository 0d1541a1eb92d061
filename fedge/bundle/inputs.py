"""Checking what `fedge bundle` was given, before anything is downloaded or written.

Every problem is a BundleError whose message names the flag or file, so the command
prints one line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_client.client import ClientConfig
from edge_client.shared.identity import load_identity
from edge_client.shared.settings import ConfigError, from_table, read_toml
from fedge.bundle.targets import DEVICE_EXTRAS, TARGETS, Target
from fedge.roles import DataSpec, ModelSpec

# Where install.sh puts things on the device; the systemd unit expects the same paths.
VENV_DIR = PurePosixPath("/opt/fedge")
APP_DIR = VENV_DIR / "app"
CONFIG_PATH = PurePosixPath("/etc/fedge/device.toml")
STATE_DIR = PurePosixPath("/var/lib/fedge")  # the unit's WorkingDirectory


class BundleError(ValueError):
    """Input `fedge bundle` cannot use; the message names the flag or file."""


class PipFailed(BundleError):
    """pip could not build or download a wheel the bundle needs (its last line says why)."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the bundle needs to know from device.toml."""

    device_id: str
    federation: str
    host: str
    port: int
    data_path: PurePosixPath  # where the device reads [data] path, absolute
    key_dest: PurePosixPath | None  # where [security] key_file puts the key, absolute
    not_in_bundle: tuple[str, ...] = ()  # files the config names outside the app's folder


def check_target(arch: str) -> Target:
    if arch not in TARGETS:
        raise BundleError(f"--arch {arch!r} is not known; use one of {', '.join(TARGETS)}")
    return TARGETS[arch]


def check_python(python: str) -> str:
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise BundleError(f"--python {python!r}: give the device's python3 as X.Y, e.g. 3.11")
    return python


def check_extras(extras: tuple[str, ...], target: Target) -> None:
    for extra in extras:
        if extra not in DEVICE_EXTRAS:
            raise BundleError(f"--extra {extra!r} is not a device extra; use one of "
                              f"{', '.join(DEVICE_EXTRAS)}")
        if extra in target.missing_extras:
            raise BundleError(f"--extra {extra}: there is no {target.arch} build of it; "
                              f"{target.arch} devices serve models with runtime='numpy'")


def check_app(app: Path) -> Path:
    if not app.exists():
        raise BundleError(f"--app {app}: no such directory")
    if not app.is_dir():
        raise BundleError(f"--app {app}: not a directory")
    if not os.access(app, os.R_OK | os.X_OK):
        raise BundleError(f"--app {app}: not readable")
    return app


def check_out(out: Path) -> Path:
    if out.is_dir():
        raise BundleError(f"--out {out}: is a directory; name the .tar.gz file to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BundleError(f"--out {out}: folder {parent} does not exist")
    probe = out.with_name(out.name + ".partial")  # what the bundle is written as, first
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as exc:
        raise BundleError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None
    return out


def on_device(path: Path | str) -> PurePosixPath:
    """A path from device.toml as the device resolves it (relative: from the state dir)."""
    posix = PurePosixPath(str(path))
    return posix if posix.is_absolute() else STATE_DIR / posix


def check_config(config: Path, app: Path) -> DeviceFacts:
    """device.toml read as `fedge device` reads it, without loading its data."""
    try:
        table = read_toml(config)
        model_table = table.pop("model", {})
        data_table = table.pop("data", {})
        client = from_table(ClientConfig, table, str(config), also_known=("data", "model"))
        from_table(ModelSpec, model_table, f"{config} [model]").arch()
        data = from_table(DataSpec, data_table, f"{config} [data]")
    except (ConfigError, ValueError, TypeError) as exc:
        raise BundleError(f"--config {config}: {_without_prefix(str(exc), config)}") from None
    auth = client.broker_auth
    named = {"[data] path": data.path, "[data] x": data.x, "[data] y": data.y,
             "[broker_auth] ca_file": auth.ca_file,
             "[broker_auth] cert_file": auth.cert_file, "[broker_auth] key_file": auth.key_file,
             "[broker_auth] password_file": auth.password_file}
    outside = []
    for key_name, path in named.items():
        if path is None:
            continue
        where = on_device(path)
        if where.is_relative_to(APP_DIR):
            inside = app / where.relative_to(APP_DIR)
            if not inside.is_file():
                raise BundleError(f"--config {config}: {key_name} {where} is in the app's "
                                  f"folder on the device, but --app has no {inside}")
        else:
            outside.append(f"{key_name} {where}")
    key = client.security.key_file
    data_path = on_device(data.path or data.x or "data.npz")
    return DeviceFacts(device_id=client.device_id, federation=client.federation,
                       host=client.host, port=client.port, data_path=data_path,
                       key_dest=on_device(key) if key is not None else None,
                       not_in_bundle=tuple(outside))


def check_key(key: Path | None, facts: DeviceFacts, config: Path) -> None:
    """An existing key to ship: it must be readable, private and go somewhere."""
    if key is None:
        return
    if facts.key_dest is None:
        raise BundleError(f"--key {key}: {config} has no [security] key_file to install it at")
    try:
        load_identity(key)
    except OSError as exc:
        raise BundleError(f"--key {key}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BundleError(f"--key {key}: {exc}") from None


def _without_prefix(message: str, config: Path) -> str:
    return message.removeprefix(f"{config}: ").removeprefix("cannot read config ")
