"""Install a `fedge bundle` offline into a fresh Raspberry Pi OS (Debian bookworm) root
filesystem under qemu-user, and run the device it installed against an aggregator on
this machine. Prints one JSON object per architecture with what it saw.

For each --arch: copies the root filesystem scripts/pi_os_check.py keeps in --work (run
that first: armhf's .debs come from its apt archives) without fedge in it; on armhf also
removes Debian's numpy, msgpack, cryptography and friends from the copy and ships their
.debs in the bundle instead. Then, on this machine, `fedge bundle --extra secagg` with a
device.toml that signs (a new key, enrolled at the aggregator); in the copy, with no
network at all (`unshare -n`), the bundle's install.sh; then the installed
`/opt/fedge/bin/fedge device --config /etc/fedge/device.toml`, as the `fedge` user
install.sh made, against mosquitto and `fedge aggregator serve` (secure mode) on
127.0.0.1. Needs root and what pi_os_check.py needs:

    sudo .venv/bin/python scripts/pi_bundle_check.py --arch arm64 --arch armhf

The copies are removed afterwards (--keep keeps them); the cached root filesystems are
never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from pi_os_check import (
    ARMHF_PACKAGES,
    REPO,
    ROUNDS,
    RUN_DEVICE,
    chroot_env,
    du_mib,
    ensure_binfmt,
    ensure_rootfs,
    federation_files,
    mount_proc,
    sh,
    umount_proc,
)

from fedge.bundle.targets import TARGETS

BUNDLE_IN_ROOT = "/root/fedge-bundle"
CHECK = "/opt/fedge-check"


@dataclass
class BundleFigures:
    arch: str
    bundle_mib: float  # the tar.gz
    wheels: list[str]
    debs_shipped: int  # .deb files in the bundle (armhf), installed by install.sh
    install_network: str
    install_s: float  # install.sh in the chroot, emulated
    venv_mib: float  # /opt/fedge after install, app included
    python: str
    numpy: str
    paho_mqtt: str
    cryptography: str
    secagg_shamir_from: str  # --extra secagg: pycryptodome as `Crypto` (pip) or `Cryptodome`
    unit_enabled: bool  # multi-user.target.wants/fedge-device.service points at the unit
    device_user: str
    device_rss_mb_peak: float  # of the qemu process: emulator included
    device_log_accepted: int
    signed: bool  # the aggregator ran in secure mode with the bundle's key enrolled
    model_versions: list[int]
    accuracy: float | None


def fresh_copy(work: Path, arch: str) -> Path:
    """The cached root filesystem without fedge: what a new Pi OS image would be."""
    cached = ensure_rootfs(work, arch)
    copy = work / f"bundle-{arch}"
    shutil.rmtree(copy, ignore_errors=True)
    sh("cp", "-a", str(cached), str(copy))
    for leftover in ("opt/fedge", "opt/fedge-check", "opt/fedge-tests"):
        shutil.rmtree(copy / leftover, ignore_errors=True)
    return copy


def in_copy(copy: Path, arch: str, *cmd: str, network: bool = False) -> str:
    prefix = [] if network else ["unshare", "-n"]
    return sh(*prefix, "chroot", str(copy), *cmd, env=chroot_env(arch))


def debs_for_armhf(work: Path, copy: Path) -> Path:
    """Remove Debian's python3-* packages from the copy (those pi_os_check.py installed),
    and gather the .debs of the ones the bundle needs, with the dependencies that went
    with them, from the cached apt archives."""
    before = installed(copy)
    in_copy(copy, "armhf", "apt-get", "purge", "-y", "-q", *ARMHF_PACKAGES)
    in_copy(copy, "armhf", "apt-get", "autoremove", "--purge", "-y", "-q")
    needed = sh("chroot", str(copy), "apt-cache", "depends", "--recurse", "--no-recommends",
                "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                "--no-enhances", *(pkg for _, pkg in TARGETS["armhf"].debian), log=False)
    closure = {line.split(":")[-1].strip() for line in needed.splitlines()}
    removed = (before - installed(copy)) & closure
    archives = work / "armhf" / "var/cache/apt/archives"
    debs = work / "debs-armhf"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    for deb in archives.glob("*.deb"):
        if deb.name.split("_", 1)[0] in removed:
            shutil.copy(deb, debs)
    missing = removed - {d.name.split("_", 1)[0] for d in debs.glob("*.deb")}
    if missing:
        raise SystemExit(f"armhf: no .deb in {archives} for {sorted(missing)}")
    return debs


def installed(root: Path) -> set[str]:
    out = sh("chroot", str(root), "dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}\n",
             log=False)
    return {name for status, _, name in (line.partition("|") for line in out.splitlines())
            if status.startswith("ii")}


def device_config(folder: Path, arch: str, port: int) -> Path:
    toml = folder / "device.toml"
    toml.write_text(f'device_id = "pi-bundle-{arch}"\nfederation = "pi"\n'
                    f'host = "127.0.0.1"\nport = {port}\nstate_dir = "/var/lib/fedge"\n'
                    '[security]\nkey_file = "/var/lib/fedge/device.key"\n'
                    '[model]\nsizes = [64, 16, 10]\n'
                    '[data]\npath = "/opt/fedge/app/data.npz"\n'
                    '[eligibility]\nenabled = false\n')
    return toml


def fedge_cli(*args: str) -> str:
    return sh(sys.executable, "-m", "fedge.cli", *args,
              env={**os.environ, "PYTHONPATH": str(REPO)})


def check(work: Path, arch: str) -> BundleFigures:
    from aggregator.store import Store
    from fedge.broker import MosquittoBroker

    ensure_binfmt(arch)
    copy = fresh_copy(work, arch)
    debs = debs_for_armhf(work, copy) if arch == "armhf" else None
    broker = MosquittoBroker.start(workdir=work / f"mosquitto-bundle-{arch}")
    try:
        folder, agg = federation_files(work, broker.port, f"bundle-{arch}")
        with agg.open("a") as f:
            f.write(f'[security]\nenabled = true\nkey_file = "{folder / "aggregator.key"}"\n')
        app = folder / "app"
        app.mkdir()
        shutil.copy(folder / "data.npz", app / "data.npz")
        out = folder / f"fedge-bundle-{arch}.tar.gz"
        fedge_cli("bundle", "--arch", arch, "--app", str(app),
                  "--config", str(device_config(folder, arch, broker.port)), "--out", str(out),
                  "--extra", "secagg",
                  *(["--debs", str(debs)] if debs else []))
        manifest = bundle_manifest(out)
        fedge_cli("aggregator", "enroll", "--config", str(agg), "--device",
                  manifest["device_id"], "--key", manifest["key_public"])

        (copy / BUNDLE_IN_ROOT.lstrip("/")).mkdir(parents=True)
        sh("tar", "xzf", str(out), "-C", str(copy / BUNDLE_IN_ROOT.lstrip("/")))
        top = f"{BUNDLE_IN_ROOT}/fedge-bundle-{manifest['device_id']}-{arch}"
        started = time.monotonic()
        print(in_copy(copy, arch, f"{top}/install.sh"), file=sys.stderr)
        install_s = time.monotonic() - started
        versions = in_copy(copy, arch, "/opt/fedge/bin/python", "-c",
                           "import sys, numpy, cryptography, paho.mqtt; from edge_client.shared."
                           "secagg.shamir import _shamir; print(sys.version.split()[0], "
                           "numpy.__version__, paho.mqtt.__version__, cryptography.__version__,"
                           " _shamir().__module__.split('.')[0])").split()

        mount_proc(copy)
        try:
            server = subprocess.Popen(
                [sys.executable, "-m", "fedge.cli", "aggregator", "serve", "--exit-when-done",
                 "--config", str(agg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                log, result = run_installed_device(copy, arch)
                server.communicate(timeout=120)
            finally:
                if server.poll() is None:
                    server.terminate()
                    server.communicate()
        finally:
            umount_proc(copy)
        store = Store(folder / "agg.sqlite3")
        history = store.model_history()
        store.close()
        model_versions = [h.version for h in history]
        (work / f"device-bundle-{arch}.log").write_text(log)
        accepted = log.count("by the aggregator") - log.count("rejected")
        if result["rc"] != 0 or accepted < 1 or model_versions[-1:] != [ROUNDS]:
            raise SystemExit(f"{arch}: the bundle's device did not finish (rc {result['rc']}, "
                             f"{accepted} accepted, versions {model_versions}); its log "
                             f"ends:\n{log[-3000:]}")
        wants = copy / "etc/systemd/system/multi-user.target.wants/fedge-device.service"
        return BundleFigures(
            arch=arch, bundle_mib=round(out.stat().st_size / 2**20, 1),
            wheels=manifest["wheels"], debs_shipped=len(manifest["debs"]),
            install_network="none (unshare -n: loopback only, down)",
            install_s=round(install_s, 1), venv_mib=du_mib(copy / "opt/fedge"),
            python=versions[0], numpy=versions[1], paho_mqtt=versions[2],
            cryptography=versions[3], secagg_shamir_from=versions[4],
            unit_enabled=os.readlink(wants) == "/etc/systemd/system/fedge-device.service",
            device_user="fedge", device_rss_mb_peak=result["peak_rss_mb"],
            device_log_accepted=accepted, signed=True, model_versions=model_versions,
            accuracy=history[-1].accuracy if history else None)
    finally:
        broker.stop()


def bundle_manifest(out: Path) -> dict:
    import tarfile

    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        stream = tar.extractfile(member)
        assert stream is not None
        return json.loads(stream.read())


def run_installed_device(copy: Path, arch: str) -> tuple[str, dict]:
    """`fedge device` as installed, as the unit runs it (user fedge, /etc/fedge/device.toml),
    under a wrapper that reports its peak RSS."""
    inner = copy / CHECK.lstrip("/")
    inner.mkdir(parents=True, exist_ok=True)
    (inner / "run_device.py").write_text(RUN_DEVICE)
    cmd = ["chroot", "--userspec=fedge:fedge", str(copy), "/opt/fedge/bin/python",
           f"{CHECK}/run_device.py", "/opt/fedge/bin/fedge", "/etc/fedge/device.toml"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=chroot_env(arch),
                          timeout=1800)
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"{arch}: the device printed nothing; stderr ends:\n"
                         f"{done.stderr[-3000:]}")
    return done.stderr, json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=("arm64", "armhf"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/fedge-pi-os"))
    parser.add_argument("--keep", action="store_true", help="keep the installed copies")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pi_bundle_check.py needs root (chroot, mount, unshare)")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for arch in args.arch or ["arm64", "armhf"]:
        try:
            figures = check(args.work, arch)
        finally:
            if not args.keep:
                shutil.rmtree(args.work / f"bundle-{arch}", ignore_errors=True)
        print(json.dumps(asdict(figures)), flush=True)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
