"""fedge bundle: what goes in, what comes out, and the one-line errors for bad input.

pip is replaced by a stub that writes placeholder wheels, so these tests are fast and
need no index; tests/unit/test_bundle_install.py builds and installs a real one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.shared.identity import create_identity
from fedge.bundle import builder, wheels
from fedge.bundle.builder import BundleRequest, build
from fedge.bundle.inputs import CONFIG_PATH, STATE_DIR, VENV_DIR, BundleError
from fedge.cli import main

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG = """device_id = "pi-kitchen"
federation = "plant-7"
host = "gateway.local"
port = 1883
state_dir = "/var/lib/fedge"
{security}
[model]
sizes = [64, 16, 10]
[data]
path = "/opt/fedge/app/data.npz"
"""
SIGNING = '[security]\nkey_file = "device.key"\n'


@pytest.fixture(autouse=True)
def root_logger_kept() -> Iterator[None]:
    """`fedge.cli.main` sets up the root logger (INFO, its handler): undo that, so later
    tests that look at captured records do not see INFO from everything."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """pip wheel and pip download, stubbed: records the downloads, writes empty wheels."""
    calls: list[tuple] = []
    fedge_whl = tmp_path / "dist" / "fedge-0.1.0-py3-none-any.whl"
    fedge_whl.parent.mkdir()
    with zipfile.ZipFile(fedge_whl, "w") as zf:
        zf.writestr("fedge-0.1.0.dist-info/METADATA",
                    "Name: fedge\nRequires-Dist: numpy>=1.24\nRequires-Dist: paho-mqtt<3,>=1.6\n"
                    "Requires-Dist: cryptography>=38.0.4\nRequires-Dist: msgpack>=1.0\n"
                    "Requires-Dist: threadpoolctl>=3.1\n"
                    'Requires-Dist: pycryptodome>=3.19; extra == "secagg"\n')

    def download(target, python, wanted, dest):
        calls.append((target.arch, python, tuple(wanted)))
        for name in ("pip-26.0-py3-none-any.whl", "paho_mqtt-2.2.0-py3-none-any.whl"):
            (dest / name).write_bytes(b"wheel")

    monkeypatch.setattr(wheels, "fedge_wheel", lambda given, dest: fedge_whl)
    monkeypatch.setattr(wheels, "download", download)
    return calls


@pytest.fixture
def app(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "data.npz").write_bytes(b"not really")
    (folder / "run.py").write_text("print('hi')\n")
    (folder / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"junk")
    return folder


def config(tmp_path: Path, security: str = SIGNING, name: str = "device.toml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(security=security))
    return path


def unpacked(out: Path, into: Path) -> Path:
    with tarfile.open(out) as tar:
        tar.extractall(into, filter="tar")
    (top,) = into.iterdir()
    return top


def test_bundle_holds_everything_the_device_needs(tmp_path, fake_pip, app):
    out = tmp_path / "b.tar.gz"
    manifest = build(BundleRequest("arm64", app, config(tmp_path), out))
    top = unpacked(out, tmp_path / "x")
    assert top.name == "fedge-bundle-pi-kitchen-arm64"
    names = sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())
    assert names == ["SHA256SUMS", "app/data.npz", "app/run.py", "bundle.env", "device.key",
                     "device.toml", "enroll.txt", "fedge-device.service", "install.sh",
                     "manifest.json", "wheels/fedge-0.1.0-py3-none-any.whl",
                     "wheels/paho_mqtt-2.2.0-py3-none-any.whl", "wheels/pip-26.0-py3-none-any.whl"]
    # arm64 downloads fedge's whole tree of wheels, and pip to install them with
    ((arch, python, wanted),) = fake_pip
    assert (arch, python) == ("arm64", "3.11") and wanted[-1] == "pip"
    assert wanted[0].endswith("fedge-0.1.0-py3-none-any.whl")
    assert stat.S_IMODE((top / "device.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((top / "install.sh").stat().st_mode) == 0o755
    assert json.loads((top / "manifest.json").read_text()) == {
        "format": 1, "arch": "arm64", "python": "3.11", "extras": [], "device_id": "pi-kitchen",
        "federation": "plant-7", "broker": "gateway.local:1883", "venv": "/opt/fedge",
        "app_dir": "/opt/fedge/app", "config": "/etc/fedge/device.toml",
        "data": "/opt/fedge/app/data.npz", "key": "/var/lib/fedge/device.key",
        "key_public": manifest.key_public, "debian_packages": [], "debs": [],
        "wheels": ["fedge-0.1.0-py3-none-any.whl", "paho_mqtt-2.2.0-py3-none-any.whl",
                   "pip-26.0-py3-none-any.whl"], "app_files": 2, "not_in_bundle": []}
    assert manifest.key_public and manifest.key_public.startswith("ed25519:")
    assert manifest.key_public in (top / "enroll.txt").read_text()


def test_checksums_cover_every_other_file(tmp_path, fake_pip, app):
    out = tmp_path / "b.tar.gz"
    build(BundleRequest("arm64", app, config(tmp_path), out))
    top = unpacked(out, tmp_path / "x")
    sums = dict(reversed(line.split("  ", 1)) for line in
                (top / "SHA256SUMS").read_text().splitlines())
    files = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    assert set(sums) == files - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((top / name).read_bytes()).hexdigest() == digest


def test_bundle_env_is_what_install_sh_reads(tmp_path, fake_pip, app):
    out = tmp_path / "b.tar.gz"
    build(BundleRequest("armhf", app, config(tmp_path), out))
    top = unpacked(out, tmp_path / "x")
    env = dict(shlex.split(line)[0].split("=", 1) for line in
               (top / "bundle.env").read_text().splitlines() if not line.startswith("#"))
    assert env == {"ARCH": "armhf", "PYTHON_VERSION": "3.11", "DEVICE_ID": "pi-kitchen",
                   "VENV": "/opt/fedge", "APP_DIR": "/opt/fedge/app",
                   "CONFIG": "/etc/fedge/device.toml", "STATE_DIR": "/var/lib/fedge",
                   "KEY_DEST": "/var/lib/fedge/device.key",
                   "SYSTEM_SITE": "--system-site-packages",
                   "DEBIAN_PACKAGES": "python3-numpy python3-cryptography python3-msgpack",
                   "FEDGE": "fedge"}
    used = set(re.findall(r"\$\{?([A-Z_]+)", (top / "install.sh").read_text()))
    assert used - {"PIP_CONFIG_FILE"} <= set(env)


def test_armhf_takes_compiled_packages_from_debian_and_ships_debs(tmp_path, fake_pip, app):
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "python3-numpy_1.24.2_armhf.deb").write_bytes(b"deb")
    manifest = build(BundleRequest("armhf", app, config(tmp_path, security=""),
                                   tmp_path / "b.tar.gz", debs=debs))
    ((_, _, wanted),) = fake_pip
    # pure-Python wheels of what Debian does not provide; extras are left out
    assert wanted == ("paho-mqtt<3,>=1.6", "threadpoolctl>=3.1", "pip")
    assert manifest.debian_packages == ["python3-numpy", "python3-cryptography",
                                        "python3-msgpack"]
    assert manifest.debs == ["python3-numpy_1.24.2_armhf.deb"]
    assert manifest.key is None and manifest.key_public is None


def test_extras_come_as_wheels_or_from_debian(tmp_path, fake_pip, app):
    manifest = build(BundleRequest("arm64", app, config(tmp_path), tmp_path / "a.tar.gz",
                                   extras=("secagg", "onnx")))
    assert fake_pip[-1][2][0].endswith("fedge-0.1.0-py3-none-any.whl[secagg,onnx]")
    assert manifest.extras == ["secagg", "onnx"]
    top = unpacked(tmp_path / "a.tar.gz", tmp_path / "a")
    assert "FEDGE='fedge[secagg,onnx]'" in (top / "bundle.env").read_text()
    manifest = build(BundleRequest("armhf", app, config(tmp_path), tmp_path / "b.tar.gz",
                                   extras=("secagg",)))
    assert manifest.debian_packages[-1] == "python3-pycryptodome"
    assert fake_pip[-1][2] == ("paho-mqtt<3,>=1.6", "threadpoolctl>=3.1", "pip")
    with pytest.raises(BundleError, match=r"^--extra onnx: there is no armhf build of it"):
        build(BundleRequest("armhf", app, config(tmp_path), tmp_path / "c.tar.gz",
                            extras=("onnx",)))


def test_files_the_config_names_must_be_in_the_app_or_are_listed(tmp_path, fake_pip, app):
    (app / "ca.crt").write_text("cert")
    auth = ('[broker_auth]\nca_file = "/opt/fedge/app/ca.crt"\nusername = "pi-kitchen"\n'
            'password_file = "/etc/fedge/broker.password"\n')
    manifest = build(BundleRequest("arm64", app, config(tmp_path, security=auth),
                                   tmp_path / "b.tar.gz"))
    assert manifest.not_in_bundle == ["[broker_auth] password_file /etc/fedge/broker.password"]
    (app / "ca.crt").unlink()
    with pytest.raises(BundleError, match=r"\[broker_auth\] ca_file /opt/fedge/app/ca.crt is in "
                                          r"the app's folder on the device, but --app has no"):
        build(BundleRequest("arm64", app, config(tmp_path, security=auth),
                            tmp_path / "b.tar.gz"))


def test_given_key_is_shipped_as_is(tmp_path, fake_pip, app):
    key = tmp_path / "keys" / "pi.key"
    identity = create_identity(key)
    manifest = build(BundleRequest("arm64", app, config(tmp_path), tmp_path / "b.tar.gz",
                                   key=key))
    top = unpacked(tmp_path / "b.tar.gz", tmp_path / "x")
    assert (top / "device.key").read_bytes() == key.read_bytes()
    assert manifest.key_public == identity.public_text


def test_install_script_parses_and_unit_matches_deploy():
    here = REPO / "fedge" / "bundle"
    subprocess.run(["bash", "-n", str(here / "install.sh")], check=True)
    unit = (here / "fedge-device.service").read_text()
    assert unit == (REPO / "deploy" / "fedge-device.service").read_text()
    # the unit runs what install.sh installs, where it installs it
    assert f"ExecStart={VENV_DIR}/bin/fedge device --config {CONFIG_PATH}\n" in unit
    assert f"WorkingDirectory={STATE_DIR}\n" in unit


@pytest.mark.parametrize(("args", "message"), [
    (["--app", "{tmp}/nope"], "--app {tmp}/nope: no such directory"),
    (["--app", "{tmp}/device.toml"], "--app {tmp}/device.toml: not a directory"),
    (["--config", "{tmp}/missing.toml"], "--config {tmp}/missing.toml: {tmp}/missing.toml: "
                                         "No such file or directory"),
    (["--config", "{tmp}/bad.toml"], "--config {tmp}/bad.toml: {tmp}/bad.toml is not valid TOML"),
    (["--config", "{tmp}/typo.toml"], "--config {tmp}/typo.toml: unknown key 'devce_id'"),
    (["--config", "{tmp}/nodata.toml"], "[data] path /opt/fedge/app/other.npz is in the app's "
                                        "folder on the device, but --app has no"),
    (["--out", "{tmp}/no/such/b.tar.gz"], "--out {tmp}/no/such/b.tar.gz: folder {tmp}/no/such "
                                          "does not exist"),
    (["--out", "{tmp}"], "--out {tmp}: is a directory"),
    (["--out", "/proc/b.tar.gz"], "--out /proc/b.tar.gz: "),
    (["--key", "{tmp}/device.toml"], "--key {tmp}/device.toml: permissions"),
    (["--python", "3"], "--python '3': give the device's python3 as X.Y, e.g. 3.11"),
    (["--debs", "{tmp}/app"], "--debs {tmp}/app: --arch arm64 takes everything as wheels"),
])
def test_bad_input_is_one_line_naming_the_flag(tmp_path, fake_pip, app, capsys, args, message):
    config(tmp_path)
    (tmp_path / "bad.toml").write_text("device_id = \n")
    (tmp_path / "typo.toml").write_text('devce_id = "x"\n')
    (tmp_path / "nodata.toml").write_text(
        CONFIG.format(security="").replace("data.npz", "other.npz"))
    defaults = {"--arch": "arm64", "--app": str(app), "--config": str(tmp_path / "device.toml"),
                "--out": str(tmp_path / "b.tar.gz")}
    given = dict(zip(args[::2], [a.format(tmp=tmp_path) for a in args[1::2]], strict=True))
    argv = [x for pair in {**defaults, **given}.items() for x in pair]
    code = main(["bundle", *argv])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert code == 2
    assert message.format(tmp=tmp_path) in err.splitlines()[-1]
    assert not (tmp_path / "b.tar.gz").exists()


def test_key_needs_a_place_in_the_config(tmp_path, fake_pip, app):
    key = tmp_path / "pi.key"
    create_identity(key)
    with pytest.raises(BundleError, match=r"^--key .*has no \[security\] key_file"):
        build(BundleRequest("arm64", app, config(tmp_path, security=""), tmp_path / "b.tgz",
                            key=key))


def test_failed_download_is_exit_1_with_pips_reason(tmp_path, app, capsys, monkeypatch):
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "Collecting numpy\nERROR: No matching distribution found for numpy\n"))
    code = main(["bundle", "--arch", "arm64", "--app", str(app), "--config",
                 str(config(tmp_path)), "--out", str(tmp_path / "b.tar.gz"),
                 "--fedge-wheel", str(REPO / "pyproject.toml")])
    assert code == 2  # --fedge-wheel is checked first: not a wheel
    assert "--fedge-wheel" in capsys.readouterr().err
    monkeypatch.setattr(wheels, "fedge_wheel", lambda given, dest: REPO / "x.whl")
    monkeypatch.setattr(builder.shutil, "copy", lambda *a, **k: None)
    code = main(["bundle", "--arch", "arm64", "--app", str(app), "--config",
                 str(config(tmp_path)), "--out", str(tmp_path / "b.tar.gz")])
    assert code == 1
    assert capsys.readouterr().err.strip() == ("fedge bundle: downloading wheels for arm64 "
                                               "failed: No matching distribution found for numpy")


def test_unknown_arch_is_argparses_one_line(tmp_path, app, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bundle", "--arch", "mips", "--app", str(app), "--config", "x.toml",
              "--out", str(tmp_path / "b.tar.gz")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "argument --arch: invalid choice: 'mips'" in err[-1]
    with pytest.raises(BundleError, match=r"^--arch 'mips' is not known; use one of arm64"):
        build(BundleRequest("mips", app, tmp_path / "x.toml", tmp_path / "b.tar.gz"))


def _run_install(top: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(top / "install.sh"), "--no-enable"],
                          capture_output=True, text=True, timeout=30)


def _reseal(top: Path) -> None:
    """Rewrite SHA256SUMS after a test changed a file on purpose."""
    files = sorted(p for p in top.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (top / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(top).as_posix()}\n"
        for p in files))


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh checks for root first")
def test_install_refuses_damaged_files_and_another_arch_before_changing_anything(
        tmp_path, fake_pip, app):
    out = tmp_path / "b.tar.gz"
    build(BundleRequest("arm64", app, config(tmp_path), out))
    top = unpacked(out, tmp_path / "x")
    (top / "device.toml").write_text("tampered\n")
    done = _run_install(top)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"install.sh: files in {top} do not match SHA256SUMS "
                                   "(device.toml: FAILED): copy the bundle again")
    # an arch no machine has, so the script can never get past this check here
    env = (top / "bundle.env").read_text().replace("ARCH=arm64", "ARCH=no-such-arch")
    (top / "bundle.env").write_text(env)
    _reseal(top)
    done = _run_install(top)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("install.sh: this bundle is for no-such-arch, "
                                          "this system is ")
    assert not Path("/opt/fedge/app/run.py").exists()
