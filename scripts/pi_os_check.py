"""Install fedge's device side on Raspberry Pi OS (Debian bookworm) arm64 and armhf under
qemu-user, by the routes docs/raspberry-pi.md documents, and run one emulated device against
an aggregator on this machine. Prints one JSON object per architecture with what it saw,
and writes it to WORK/figures-ARCH.json too (benchmarks/footprint.py reads them).

Slow (debootstrap, emulated apt and pip) and needs root, network to the Debian mirror and the
package index, and qemu-user-static with binfmt_misc, so it is not part of the test command:

    apt-get install debootstrap qemu-user-static binfmt-support mosquitto
    python scripts/pi_os_check.py --arch arm64 --arch armhf   # from the repo, its venv active

Root filesystems are kept in --work (default /var/tmp/fedge-pi-os) and reused. The chroot
shares this machine's network namespace, so the device reaches mosquitto on 127.0.0.1. /proc
is mounted in the chroot, /sys is not (onnxruntime crashes under emulation when it is).
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

REPO = Path(__file__).resolve().parent.parent
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "ca-certificates"]
# armhf: no armv7l wheels of numpy, msgpack, cffi or pycryptodome on the index, so
# Debian's own builds; paho-mqtt 1.6.1 and cryptography 38.0.4 are what bookworm ships.
ARMHF_PACKAGES = ["python3-numpy", "python3-msgpack", "python3-cryptography",
                  "python3-pycryptodome", "python3-paho-mqtt", "python3-threadpoolctl"]
PROBED_WHEELS = ["numpy", "msgpack", "cffi", "cryptography", "pycryptodome", "paho-mqtt",
                 "onnxruntime", "ai-edge-litert"]
UNIT_TESTS = " ".join(f"tests/unit/test_{name}.py" for name in (
    "identity", "signing", "secagg", "secagg_edges", "secagg_parts", "secagg_round",
    "secagg_security", "paho_compat"))
VENV = "/opt/fedge"
CHECK = "/opt/fedge-check"
ROUNDS = 3

# Run inside the chroot: the device as a child, so its peak RSS is the child's maxrss.
RUN_DEVICE = """
import resource, subprocess, sys, json
done = subprocess.run([sys.argv[1], "device", "--config", sys.argv[2]])
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "peak_rss_mb": round(rss_kb / 1024, 1)}))
"""

# Run inside the chroot: seconds one fresh interpreter takes to import `module`.
TIME_IMPORT = """
import sys, time
start = time.perf_counter()
__import__(sys.argv[1])
print(time.perf_counter() - start)
"""


@dataclass
class Figures:
    arch: str
    route: str
    python: str
    paho_mqtt: str
    numpy: str
    cryptography: str
    install_mib: float  # the venv (arm64: everything; armhf: fedge only)
    debian_deps_mib: float | None  # armhf: Debian's python3-* packages fedge uses
    import_s: float  # `import edge_client.client`, median of 3 fresh interpreters
    numpy_import_s: float
    import_ratio: float
    device_rss_mb_peak: float  # of the qemu process: emulator included
    wheels_on_index: dict[str, bool]  # has the index a wheel for this arch's pip?
    device_log_accepted: int  # "accepted by the aggregator" lines in the device's log
    model_versions: list[int]
    accuracy: float | None  # the aggregator's held-out accuracy of the last version
    host_accuracy: float | None  # the same federation with the device on this machine
    unit_tests: str | None  # --unit-tests: pytest's last line for UNIT_TESTS in the chroot


def sh(*cmd: str, env: dict[str, str] | None = None, log: bool = True,
       timeout: float | None = None) -> str:
    if log:
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return done.stdout


def chroot_env(arch: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if arch == "arm64":
        env["OPENBLAS_CORETYPE"] = "ARMV8"  # qemu's default CPU makes OpenBLAS pick slow code
    if os.environ.get("PIP_CERT"):  # a TLS-inspecting proxy here: the chroot's pip trusts it
        env["PIP_CERT"] = f"{CHECK}/host-ca.pem"
    return env


def in_chroot(root: Path, arch: str, *cmd: str, timeout: float | None = None) -> str:
    return sh("chroot", str(root), *cmd, env=chroot_env(arch), timeout=timeout)


def ensure_binfmt(arch: str) -> None:
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        sh("mount", "binfmt_misc", "-t", "binfmt_misc", str(binfmt))
    name = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}[arch]
    if not (binfmt / name).exists():
        sh("update-binfmts", "--enable", name)


def ensure_rootfs(work: Path, arch: str) -> Path:
    root = work / arch
    marker = root / ".fedge-rootfs-ok"
    if marker.exists():
        return root
    # Only the base here: debootstrap's --include does not resolve virtual packages
    # (python3-cryptography needs python3-cffi-backend-api-*); apt-get does, in `check`.
    sh("debootstrap", "--variant=minbase", f"--arch={arch}",
       "--include=" + ",".join(BASE_PACKAGES), "bookworm", str(root), MIRROR)
    marker.touch()
    return root


def installed_packages(root: Path, arch: str) -> set[str]:
    out = in_chroot(root, arch, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}\n")
    return {name for status, _, name in (line.partition("|") for line in out.splitlines())
            if status.startswith("ii")}


def mount_proc(root: Path) -> None:
    proc = root / "proc"
    if not os.path.ismount(proc):
        sh("mount", "-t", "proc", "proc", str(proc))


def umount_proc(root: Path) -> None:
    if os.path.ismount(root / "proc"):
        sh("umount", str(root / "proc"))


def build_wheel(work: Path) -> Path:
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(REPO))
    return next(dist.glob("fedge-*.whl"))


def install(root: Path, arch: str, wheel: Path) -> None:
    """The documented route for `arch` (docs/raspberry-pi.md)."""
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")  # the chroot's pip and apt
    (root / CHECK.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if os.environ.get("PIP_CERT"):
        shutil.copy(os.environ["PIP_CERT"], root / CHECK.lstrip("/") / "host-ca.pem")
    target = root / CHECK.lstrip("/") / wheel.name
    shutil.copy(wheel, target)
    inner_wheel = f"{CHECK}/{wheel.name}"
    shutil.rmtree(root / VENV.lstrip("/"), ignore_errors=True)
    if arch == "arm64":
        in_chroot(root, arch, "python3", "-m", "venv", VENV)
        in_chroot(root, arch, f"{VENV}/bin/pip", "install", "--only-binary=:all:", inner_wheel)
    else:
        in_chroot(root, arch, "python3", "-m", "venv", "--system-site-packages", VENV)
        in_chroot(root, arch, f"{VENV}/bin/pip", "install", "--no-deps", inner_wheel)
    print(in_chroot(root, arch, f"{VENV}/bin/pip", "check"), file=sys.stderr)


def wheels_on_index(root: Path, arch: str) -> dict[str, bool]:
    """Whether pip in the chroot finds a wheel (never an sdist to build) of each."""
    found = {}
    for name in PROBED_WHEELS:
        done = subprocess.run(["chroot", str(root), f"{VENV}/bin/pip", "download", "--no-deps",
                               "--only-binary=:all:", "-d", "/tmp/fedge-probe", name],
                              capture_output=True, text=True, env=chroot_env(arch))
        found[name] = done.returncode == 0
    shutil.rmtree(root / "tmp/fedge-probe", ignore_errors=True)
    return found


def unit_tests(root: Path, arch: str) -> str:
    """The signing, identity, secure aggregation and paho adapter tests, on this arch's
    own cryptography, pycryptodome, paho and numpy (pytest is added to the venv)."""
    tests = root / "opt/fedge-tests"
    shutil.rmtree(tests, ignore_errors=True)
    tests.mkdir(parents=True)
    shutil.copytree(REPO / "tests", tests / "tests",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tests)
    # arm64 adds the secagg extra's pycryptodome from a wheel; armhf has Debian's.
    extra = ["pycryptodome>=3.19"] if arch == "arm64" else []
    in_chroot(root, arch, f"{VENV}/bin/pip", "install", "--only-binary=:all:", "pytest",
              *extra)
    done = subprocess.run(["chroot", str(root), "sh", "-c", f"cd /opt/fedge-tests && "
                           f"{VENV}/bin/python -m pytest -q -p no:cacheprovider {UNIT_TESTS}"],
                          capture_output=True, text=True, env=chroot_env(arch))
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    if done.returncode != 0:
        print(f"{arch}: unit tests failed:\n{done.stdout[-3000:]}", file=sys.stderr)
        return f"FAILED: {last}"
    return last


def du_mib(path: Path) -> float:
    return round(int(sh("du", "-sb", str(path), log=False).split()[0]) / 2**20, 1)


def debian_deps_mib(root: Path, arch: str) -> float:
    out = in_chroot(root, arch, "dpkg-query", "-W", "-f", "${Installed-Size}\n",
                    *ARMHF_PACKAGES)
    return round(sum(int(x) for x in out.split()) / 1024, 1)


def median_import_s(root: Path, arch: str, module: str) -> float:
    (root / CHECK.lstrip("/") / "time_import.py").write_text(TIME_IMPORT)
    times = sorted(float(in_chroot(root, arch, f"{VENV}/bin/python",
                                   f"{CHECK}/time_import.py", module))
                   for _ in range(3))
    return round(times[1], 3)


def versions(root: Path, arch: str) -> tuple[str, str, str, str]:
    out = in_chroot(root, arch, f"{VENV}/bin/python", "-c",
                    "import sys, numpy, cryptography, paho.mqtt; print(sys.version.split()[0],"
                    " paho.mqtt.__version__, numpy.__version__, cryptography.__version__)")
    py, paho, np_version, crypto = out.split()
    return py, paho, np_version, crypto


def federation_files(work: Path, port: int, tag: str) -> tuple[Path, Path]:
    """Digits split in two: the device's share and the aggregator's held-out set."""
    import numpy as np

    from fedge.datasets import load_digits

    x, y = load_digits()
    folder = work / f"run-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.savez(folder / "data.npz", x=x[:1200], y=y[:1200])
    np.savez(folder / "heldout.npz", x=x[1500:], y=y[1500:])
    agg = folder / "agg.toml"
    agg.write_text(f'federation = "pi"\nport = {port}\nrounds = {ROUNDS}\n'
                   f'db_path = "{folder / "agg.sqlite3"}"\n[model]\nsizes = [64, 16, 10]\n'
                   '[train]\nepochs = 2\nlr = 0.1\nmomentum = 0.5\n'
                   '[sync]\ntarget_updates = 1\nmin_fraction = 1.0\nround_timeout_s = 600\n'
                   f'[evaluation]\ndata = "{folder / "heldout.npz"}"\n')
    return folder, agg


def device_toml(data: str, state: str, port: int, device: str) -> str:
    return (f'device_id = "{device}"\nfederation = "pi"\nhost = "127.0.0.1"\nport = {port}\n'
            f'state_dir = "{state}"\n[model]\nsizes = [64, 16, 10]\n'
            f'[data]\npath = "{data}"\n[eligibility]\nenabled = false\n')


def run_federation(work: Path, tag: str, device_cmd) -> tuple[str, dict, list[int], float | None]:
    """mosquitto + `fedge aggregator serve` here; `device_cmd(folder, port)` runs the
    device and returns (its log, its result). Returns those with the store's versions."""
    from aggregator.store import Store
    from fedge.broker import MosquittoBroker

    broker = MosquittoBroker.start(workdir=work / f"mosquitto-{tag}")
    try:
        folder, agg = federation_files(work, broker.port, tag)
        server = subprocess.Popen([sys.executable, "-m", "fedge.cli", "aggregator", "serve",
                                   "--exit-when-done", "--config", str(agg)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            log, result = device_cmd(folder, broker.port)
            server.communicate(timeout=120)
        finally:
            if server.poll() is None:
                server.terminate()
                server.communicate()
        store = Store(folder / "agg.sqlite3")
        history = store.model_history()
        store.close()
        accuracy = history[-1].accuracy if history else None
        return log, result, [h.version for h in history], accuracy
    finally:
        broker.stop()


def chroot_device(root: Path, arch: str):
    def run(folder: Path, port: int) -> tuple[str, dict]:
        inner = root / CHECK.lstrip("/")
        shutil.copy(folder / "data.npz", inner / "data.npz")
        shutil.rmtree(inner / "state", ignore_errors=True)
        (inner / "dev.toml").write_text(device_toml(f"{CHECK}/data.npz", f"{CHECK}/state",
                                                    port, f"pi-{arch}"))
        (inner / "run_device.py").write_text(RUN_DEVICE)
        print(f"+ chroot {root} {VENV}/bin/python {CHECK}/run_device.py {VENV}/bin/fedge "
              f"{CHECK}/dev.toml", file=sys.stderr, flush=True)
        done = subprocess.run(["chroot", str(root), f"{VENV}/bin/python",
                               f"{CHECK}/run_device.py", f"{VENV}/bin/fedge",
                               f"{CHECK}/dev.toml"], capture_output=True, text=True,
                              env=chroot_env(arch), timeout=1800)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return done.stderr, result
    return run


def host_device(folder: Path, port: int) -> tuple[str, dict]:
    toml = folder / "dev.toml"
    toml.write_text(device_toml(str(folder / "data.npz"), str(folder / "state"), port, "x86"))
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "device", "--config", str(toml)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.stderr, {"rc": done.returncode}


def check(work: Path, arch: str, wheel: Path, host_accuracy: float | None,
          with_unit_tests: bool) -> Figures:
    ensure_binfmt(arch)
    root = ensure_rootfs(work, arch)
    mount_proc(root)
    try:
        if arch == "armhf" and not set(ARMHF_PACKAGES) <= installed_packages(root, arch):
            in_chroot(root, arch, "apt-get", "update")
            in_chroot(root, arch, "apt-get", "install", "-y", "--no-install-recommends",
                      *ARMHF_PACKAGES)
        install(root, arch, wheel)
        py, paho, np_version, crypto = versions(root, arch)
        numpy_s = median_import_s(root, arch, "numpy")
        client_s = median_import_s(root, arch, "edge_client.client")
        log, result, model_versions, accuracy = run_federation(
            work, arch, chroot_device(root, arch))
        (work / f"device-{arch}.log").write_text(log)
        accepted = log.count("by the aggregator") - log.count("rejected")
        if result["rc"] != 0 or accepted < 1 or model_versions[-1:] != [ROUNDS]:
            raise SystemExit(f"{arch}: the device did not finish (rc {result['rc']}, "
                             f"{accepted} accepted, versions {model_versions}); its log "
                             f"ends:\n{log[-3000:]}")
        return Figures(
            arch=arch, route="venv + pip wheels" if arch == "arm64" else
            "Debian python3-* + --system-site-packages venv + pip --no-deps fedge",
            python=py, paho_mqtt=paho, numpy=np_version, cryptography=crypto,
            install_mib=du_mib(root / VENV.lstrip("/")),
            debian_deps_mib=debian_deps_mib(root, arch) if arch == "armhf" else None,
            import_s=client_s, numpy_import_s=numpy_s,
            import_ratio=round(client_s / numpy_s, 2),
            device_rss_mb_peak=result["peak_rss_mb"], device_log_accepted=accepted,
            wheels_on_index=wheels_on_index(root, arch),
            model_versions=model_versions, accuracy=accuracy, host_accuracy=host_accuracy,
            unit_tests=unit_tests(root, arch) if with_unit_tests else None)
    finally:
        umount_proc(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=("arm64", "armhf"))
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/fedge-pi-os"))
    parser.add_argument("--unit-tests", action="store_true",
                        help="also run the crypto and paho unit tests in each chroot")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pi_os_check.py needs root (debootstrap, chroot, mount)")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    wheel = build_wheel(args.work)
    failed = False
    log, result, host_versions, host_accuracy = run_federation(args.work, "x86", host_device)
    if result["rc"] != 0 or host_versions[-1:] != [ROUNDS]:
        raise SystemExit(f"the device on this machine failed ({host_versions}):\n{log[-3000:]}")
    for arch in args.arch or ["arm64", "armhf"]:
        figures = check(args.work, arch, wheel, host_accuracy, args.unit_tests)
        print(json.dumps(asdict(figures)), flush=True)
        # benchmarks/footprint.py reports the newest of these beside its own figures
        (args.work / f"figures-{arch}.json").write_text(json.dumps(asdict(figures)) + "\n")
        failed = failed or (figures.unit_tests or "").startswith("FAILED")
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if failed:
        raise SystemExit("unit tests failed in a chroot (above)")


if __name__ == "__main__":
    main()
