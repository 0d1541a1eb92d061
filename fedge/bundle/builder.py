"""Putting a bundle together: a folder laid out as install.sh expects, then a tar.gz.

Layout (everything under one top folder, `fedge-bundle-DEVICE-ARCH/`):

    install.sh  bundle.env  manifest.json  SHA256SUMS  fedge-device.service
    device.toml  device.key (when the config signs)  enroll.txt (its public half)
    wheels/*.whl  app/...  debs/*.deb (armhf, when --debs was given)
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_client.shared.identity import Identity, create_identity, load_identity
from fedge.bundle import inputs, wheels
from fedge.bundle.inputs import BundleError, DeviceFacts
from fedge.bundle.targets import Target

HERE = Path(__file__).resolve().parent
FORMAT = 1


@dataclass
class BundleRequest:
    """What `fedge bundle` was asked for."""

    arch: str
    app: Path
    config: Path
    out: Path
    key: Path | None = None  # ship this key; else make one when the config signs
    fedge_wheel: Path | None = None  # else build one from this source tree
    debs: Path | None = None  # a folder of .deb files to ship (armhf's Debian packages)
    python: str = "3.11"  # the target's CPython (Debian bookworm, Pi OS)
    extras: tuple[str, ...] = ()  # fedge's device-side extras: secagg, onnx, litert


@dataclass
class Manifest:
    """manifest.json: what is in the bundle and where install.sh puts it."""

    format: int
    arch: str
    python: str
    extras: list[str]
    device_id: str
    federation: str
    broker: str
    venv: str
    app_dir: str
    config: str
    data: str
    key: str | None  # where the key goes on the device; None: the device does not sign
    key_public: str | None  # "ed25519:..." to enroll at the aggregator
    debian_packages: list[str]  # must be installed (or shipped in debs/) first
    debs: list[str] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)
    app_files: int = 0
    not_in_bundle: list[str] = field(default_factory=list)  # the device must have these


def build(request: BundleRequest) -> Manifest:
    """Check the inputs, then write request.out; returns what went in."""
    target = inputs.check_target(request.arch)
    inputs.check_extras(request.extras, target)
    inputs.check_python(request.python)
    app = inputs.check_app(request.app)
    facts = inputs.check_config(request.config, app)
    inputs.check_key(request.key, facts, request.config)
    debs = _check_debs(request.debs, target)
    out = inputs.check_out(request.out)
    with tempfile.TemporaryDirectory(prefix="fedge-bundle-") as tmp:
        top = Path(tmp) / f"fedge-bundle-{facts.device_id}-{target.arch}"
        top.mkdir()
        wheel = wheels.fedge_wheel(request.fedge_wheel, Path(tmp) / "dist")
        debian_packages = _add_wheels(top / "wheels", target, request, wheel)
        shutil.copytree(app, top / "app", symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(request.config, top / "device.toml")
        identity = _add_key(top, request.key, facts)
        for deb in debs:
            (top / "debs").mkdir(exist_ok=True)
            shutil.copy(deb, top / "debs" / deb.name)
        manifest = _manifest(request, facts, top, identity, debian_packages)
        (top / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        _add_installer(top, manifest, target)
        _write_checksums(top)
        _pack(top, out)
    return manifest


def _check_debs(debs: Path | None, target: Target) -> list[Path]:
    if debs is None:
        return []
    if not target.debian:
        raise BundleError(f"--debs {debs}: --arch {target.arch} takes everything as wheels")
    if not debs.is_dir():
        raise BundleError(f"--debs {debs}: no such directory")
    found = sorted(debs.glob("*.deb"))
    if not found:
        raise BundleError(f"--debs {debs}: no .deb files in it")
    return found


def _add_wheels(dest: Path, target: Target, request: BundleRequest, wheel: Path) -> list[str]:
    """Wheels into `dest`; returns the Debian packages the device must have besides."""
    dest.mkdir()
    shutil.copy(wheel, dest / wheel.name)
    if target.wheel_arch is not None:
        extras = f"[{','.join(request.extras)}]" if request.extras else ""
        wheels.download(target, request.python, [f"{dest / wheel.name}{extras}", "pip"], dest)
        return []
    debian, wanted = [], []
    for requirement in wheels.requirements(wheel, request.extras):
        package = target.debian_package(wheels.requirement_name(requirement))
        if package is None:
            wanted.append(requirement)  # pure Python, or pip download says it is not
        elif package not in debian:
            debian.append(package)
    wheels.download(target, request.python, [*wanted, "pip"], dest)
    return debian


def _add_key(top: Path, key: Path | None, facts: DeviceFacts) -> Identity | None:
    if facts.key_dest is None:
        return None
    if key is not None:
        shutil.copy(key, top / "device.key")
        os.chmod(top / "device.key", 0o600)
        identity = load_identity(top / "device.key")
    else:
        identity = create_identity(top / "device.key")
    (top / "enroll.txt").write_text(
        f"# At the gateway, before this device joins:\n"
        f"fedge aggregator enroll --config aggregator.toml --device {facts.device_id} "
        f"--key '{identity.public_text}'\n")
    return identity


def _manifest(request: BundleRequest, facts: DeviceFacts, top: Path,
              identity: Identity | None, debian_packages: list[str]) -> Manifest:
    return Manifest(
        format=FORMAT, arch=request.arch, python=request.python, extras=list(request.extras),
        device_id=facts.device_id,
        federation=facts.federation, broker=f"{facts.host}:{facts.port}",
        venv=str(inputs.VENV_DIR), app_dir=str(inputs.APP_DIR),
        config=str(inputs.CONFIG_PATH), data=str(facts.data_path),
        key=str(facts.key_dest) if facts.key_dest else None,
        key_public=identity.public_text if identity else None,
        debian_packages=debian_packages,
        debs=sorted(p.name for p in (top / "debs").glob("*.deb")),
        wheels=sorted(p.name for p in (top / "wheels").glob("*.whl")),
        app_files=sum(1 for p in (top / "app").rglob("*") if p.is_file()),
        not_in_bundle=list(facts.not_in_bundle))


def _add_installer(top: Path, manifest: Manifest, target: Target) -> None:
    """install.sh and the unit, with bundle.env: the settings install.sh reads."""
    settings = {
        "ARCH": manifest.arch, "PYTHON_VERSION": manifest.python,
        "DEVICE_ID": manifest.device_id, "VENV": manifest.venv, "APP_DIR": manifest.app_dir,
        "CONFIG": manifest.config, "STATE_DIR": str(inputs.STATE_DIR),
        "KEY_DEST": manifest.key or "",
        "SYSTEM_SITE": "--system-site-packages" if target.system_site_packages else "",
        "DEBIAN_PACKAGES": " ".join(manifest.debian_packages),
        # Debian targets: the extras' packages come from Debian, under other names
        # (pycryptodomex), so pip installs plain fedge there.
        "FEDGE": (f"fedge[{','.join(manifest.extras)}]"
                  if manifest.extras and not target.system_site_packages else "fedge"),
    }
    (top / "bundle.env").write_text(
        "# Read by install.sh: where this bundle puts things on the device.\n"
        + "".join(f"{key}={shlex.quote(value)}\n" for key, value in settings.items()))
    shutil.copy(HERE / "install.sh", top / "install.sh")
    os.chmod(top / "install.sh", 0o755)
    shutil.copy(HERE / "fedge-device.service", top / "fedge-device.service")


def _write_checksums(top: Path) -> None:
    lines = []
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(top).as_posix()}\n")
    (top / "SHA256SUMS").write_text("".join(lines))


def _pack(top: Path, out: Path) -> None:
    """Write to a temporary name next to `out`, then rename: no half-written bundle."""
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(top, arcname=top.name)
        os.replace(partial, out)
    except OSError as exc:
        raise BundleError(f"--out {out}: cannot write it: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
