"""The device's footprint: peak RSS of a device process, import time, install size, and
training on data larger than memory.

    .venv/bin/python benchmarks/footprint.py [--rounds 3] [--repeats 7] [--memmap-mb 1024]

RSS: one `fedge device --config device.toml` process (as `python -m fedge.cli device`)
runs the demo job against mosquitto and `fedge aggregator serve --exit-when-done`, each in
its own process, for --rounds sync rounds: digits, MLP 64-1333-10, the demo's first
device's share (Dirichlet 0.5, seed 42), 2 local epochs, batch 32, lr 0.1, momentum 0.5,
uplink topk=0.01,q4, downlink q8 deltas, no keys. Its peak is the child's ru_maxrss from
os.wait4 (the kernel's high-water RSS: anonymous memory and mapped files, shared
libraries included). Baselines measured the same way in this run: `python -c "pass"`,
`import numpy`, and `import numpy, msgpack, paho.mqtt.client` (every third-party module
the device runs on: the floor under any device code; numpy.random is not among them, a
demo device never loads it). `numpy_random_rss_mb` is what numpy.random would add.
The device runs with the environment of this process, as the shipped systemd unit
leaves it (no allocator or thread settings). Target: 40 MB.

Import: `import edge_client.client` and `import numpy` in fresh interpreters, taking turns,
median of --repeats each after one warm-up. Target: at most 1.3x numpy's. For scale, the
same for `import numpy, msgpack, paho.mqtt.client`, the third-party modules the client
cannot do without. The modules it loads are listed, and which optional ones
(cryptography, pycryptodome, the runtimes, the aggregator) are among them. Every
interpreter reads .pyc files from a temporary folder, as an installed package would.

Install: the files (from each distribution's RECORD) of fedge's required dependencies and
theirs, without numpy, plus fedge's own packages (sources, no __pycache__), from this
machine's site-packages. A wheel install adds compiled .pyc files on top.

Memmap: a --memmap-mb MB float32 .npy of 4096-feature rows is written to a temporary
folder and trained on for one epoch (evaluate, then fit, as a device round does) through
np.load(mmap_mode="r") in a fresh interpreter; its anonymous memory (RssAnon: what the
kernel cannot drop, unlike the file's cached pages) is sampled every 2 ms.

qemu: the figures scripts/pi_os_check.py writes to --qemu-dir (figures-ARCH.json), if it
has run there. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RSS_MB = 40.0
TARGET_IMPORT_RATIO = 1.3
DEPENDENCIES = "numpy, msgpack, paho.mqtt.client"  # all a device needs of them
OPTIONAL = ("cryptography", "Crypto", "Cryptodome", "onnxruntime", "onnx", "ai_edge_litert",
            "tflite_runtime", "aggregator", "sqlite3")
FEDGE_PACKAGES = ("edge_client", "aggregator", "fedge", "firmware_bridge")
TIME_IMPORT = ("import time; t = time.perf_counter(); import {0}; "
               "print(time.perf_counter() - t)")
LOADED = ("import sys, json; import {0}; "
          "print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({1!r}))), "
          "len(sys.modules))")
AGGREGATOR_TOML = """federation = "footprint"
port = {port}
rounds = {rounds}
db_path = "{folder}/agg.sqlite3"
[model]
sizes = [64, 1333, 10]
[train]
epochs = 2
batch_size = 32
lr = 0.1
momentum = 0.5
[sync]
target_updates = 1
min_fraction = 1.0
round_timeout_s = 300
[uplink]
sparsify = "topk"
fraction = 0.01
quantize = "q4"
[evaluation]
data = "{folder}/heldout.npz"
"""
DEVICE_TOML = """device_id = "device-0"
federation = "footprint"
host = "127.0.0.1"
port = {port}
state_dir = "{folder}/state"
[model]
sizes = [64, 1333, 10]
[data]
path = "{folder}/data.npz"
[eligibility]
enabled = false
"""


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="sync rounds the device trains")
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters per import")
    parser.add_argument("--memmap-mb", type=int, default=1024,
                        help="size of the memory-mapped training file (0: skip)")
    parser.add_argument("--qemu-dir", type=Path, default=Path("/var/tmp/fedge-pi-os"),
                        help="where scripts/pi_os_check.py wrote its figures")
    return parser.parse_args()


# Every interpreter started here reads and writes bytecode under one temporary folder, as
# an installed package has its .pyc files (pip compiles them): compiling from source
# would time and count the compiler (PYTHONDONTWRITEBYTECODE is dropped for that reason).
PYCACHE = Path(tempfile.mkdtemp(prefix="fedge-footprint-pyc-"))


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_bytecode() -> None:
    """Import what is measured once, so the .pyc files exist before any measurement
    (threadpoolctl and the IDNA codec too: a device imports them once running, and
    compiling threadpoolctl takes 2.8 MB of peak RSS in an interpreter that only imports)."""
    subprocess.run([sys.executable, "-c", f"import {DEPENDENCIES}, edge_client.client, "
                    "fedge.cli, fedge.roles, fedge.demo, aggregator.service, threadpoolctl, "
                    "encodings.idna"],
                   env=_env(), cwd=REPO, check=True)


# A small interpreter starts the measured command: a child forked from this (large)
# process would report this process's RSS as its peak, since Linux keeps the high-water
# mark of the memory a fork copies across exec.
LAUNCH = """
import os, subprocess, sys
with open(sys.argv[1], "w") as log:
    child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=log)
    _, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(command: list[str], log: Path) -> tuple[float, int]:
    """Run `command` to its end, its output to `log`: (its peak RSS in MB, its exit code)."""
    done = subprocess.run([sys.executable, "-c", LAUNCH, str(log), *command], env=_env(),
                          cwd=REPO, capture_output=True, text=True, check=True)
    rss, code = done.stdout.split()
    return float(rss), int(code)


def device_rss(rounds: int) -> dict:
    """Peak RSS of one device process training the demo job over real MQTT."""
    import numpy as np

    from fedge.broker import MosquittoBroker
    from fedge.demo import DemoFleet
    from fedge.digits_job import DigitsJob

    fleet = DemoFleet()
    job = DigitsJob.split(fleet.devices, fleet.alpha, seed=42, hidden=fleet.hidden)
    with tempfile.TemporaryDirectory(prefix="fedge-footprint-") as tmp:
        folder = Path(tmp)
        x, y = job.shards[0]
        np.savez(folder / "data.npz", x=x, y=y)
        np.savez(folder / "heldout.npz", x=job.x_test, y=job.y_test)
        broker = MosquittoBroker.start(workdir=folder / "mosquitto")
        try:
            fields = {"port": broker.port, "rounds": rounds, "folder": folder}
            (folder / "agg.toml").write_text(AGGREGATOR_TOML.format(**fields))
            (folder / "device.toml").write_text(DEVICE_TOML.format(**fields))
            server = subprocess.Popen(
                [sys.executable, "-m", "fedge.cli", "aggregator", "serve", "--exit-when-done",
                 "--config", str(folder / "agg.toml")], env=_env(), cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                rss, code = peak_rss_mb([sys.executable, "-m", "fedge.cli", "device",
                                         "--config", str(folder / "device.toml")],
                                        folder / "device.log")
                _, server_log = server.communicate(timeout=120)
            finally:
                if server.poll() is None:
                    server.terminate()
                    server.communicate()
            device_log = (folder / "device.log").read_text()
        finally:
            broker.stop()
        accepted = device_log.count("by the aggregator") - device_log.count("rejected")
        if code != 0 or accepted < rounds:
            raise SystemExit(f"the device did not finish (exit {code}, {accepted} updates "
                             f"accepted):\n{device_log[-2000:]}\n{server_log[-2000:]}")
        return {"device_rss_mb_peak": round(rss, 1), "device_samples": len(x),
                "updates_accepted": accepted}


def baseline_rss() -> dict:
    """Peak RSS of the interpreter alone, with numpy, and with every third-party module a
    device loads (paho by the transport); and what numpy.random would add to the last."""
    log = Path(os.devnull)
    found = {}
    for name, code in (("python", "pass"), ("numpy", "import numpy"),
                       ("dependencies", f"import {DEPENDENCIES}"),
                       ("with_numpy_random", f"import {DEPENDENCIES}, numpy.random")):
        mb, _ = peak_rss_mb([sys.executable, "-c", code], log)
        found[f"{name}_rss_mb_peak"] = round(mb, 1)
    found["numpy_random_rss_mb"] = round(found.pop("with_numpy_random_rss_mb_peak")
                                         - found["dependencies_rss_mb_peak"], 1)
    return found


def import_times(repeats: int) -> dict:
    """Medians of fresh-interpreter import times, the two modules taking turns."""
    def once(module: str) -> float:
        done = subprocess.run([sys.executable, "-c", TIME_IMPORT.format(module)], env=_env(),
                              cwd=REPO, capture_output=True, text=True, check=True)
        return float(done.stdout)

    deps = "numpy, msgpack, paho.mqtt.client"
    times: dict[str, list[float]] = {"numpy": [], deps: [], "edge_client.client": []}
    for module in times:
        once(module)  # warm the file cache
    for _ in range(repeats):
        for module, runs in times.items():
            runs.append(once(module))
    numpy_s = statistics.median(times["numpy"])
    client_s = statistics.median(times["edge_client.client"])
    deps_s = statistics.median(times[deps])
    return {"import_s": round(client_s, 4), "numpy_import_s": round(numpy_s, 4),
            "import_ratio": round(client_s / numpy_s, 2),
            "dependencies_import_s": round(deps_s, 4),
            "dependencies_import_ratio": round(deps_s / numpy_s, 2),
            "import_s_runs": [round(t, 4) for t in times["edge_client.client"]],
            "numpy_import_s_runs": [round(t, 4) for t in times["numpy"]]}


def loaded_modules() -> dict:
    """What importing the client, and starting `fedge device`, loads."""
    found = {}
    for name, statement in (("edge_client.client", "edge_client.client"),
                            ("fedge device imports", "fedge.cli, fedge.roles")):
        done = subprocess.run([sys.executable, "-c", LOADED.format(statement, OPTIONAL)],
                              env=_env(), cwd=REPO, capture_output=True, text=True, check=True)
        optional, count = done.stdout.rsplit(" ", 1)
        found[name] = {"modules": int(count), "optional_loaded": json.loads(optional)}
    return found


def install_size() -> dict:
    """MiB on disk of fedge's required dependencies (and theirs) and of fedge itself."""
    from packaging.requirements import Requirement

    sizes: dict[str, float] = {}
    todo = [Requirement(r) for r in metadata.requires("fedge") or []]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in sizes or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        files = [Path(str(f.locate())) for f in dist.files or []]
        sizes[name] = sum(f.stat().st_size for f in files if f.is_file()) / 2**20
        todo.extend(Requirement(r) for r in dist.requires or [])
    sizes["fedge"] = sum(f.stat().st_size for package in FEDGE_PACKAGES
                         for f in (REPO / package).rglob("*")
                         if f.is_file() and "__pycache__" not in f.parts) / 2**20
    without_numpy = sum(mib for name, mib in sizes.items() if name != "numpy")
    return {"install_mib_excl_numpy": round(without_numpy, 1),
            "install_mib_numpy": round(sizes.get("numpy", 0.0), 1),
            "install_mib_by_distribution": {k: round(v, 1) for k, v in sorted(sizes.items())}}


# In a fresh interpreter: evaluate then fit one epoch on argv[1], argv[2] memory-mapped.
MEMMAP_TRAIN = """
import sys, threading, time
import numpy as np
from edge_client.local_data import checked_local_data
from edge_client.training import TrainConfig, mlp_trainer

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

x_file, y_file = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
trainer = mlp_trainer([x_file.shape[1], 16, 4])
trainer.get_weights()  # drawn now (a device's are set before it trains), not measured
start, peak, done = status("RssAnon"), [0.0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
began = time.perf_counter()
x, y = checked_local_data(x_file, y_file)
trainer.evaluate(x, y)
result = trainer.fit(x, y, TrainConfig(epochs=1, batch_size=32, lr=0.01))
done.set()
sampler.join()
print(start, max(peak[0], status("RssAnon")), status("VmHWM"), result.batches,
      time.perf_counter() - began)
"""


def memmap_training(size_mb: int) -> dict:
    import numpy as np

    features = 4096
    rows = size_mb * 2**20 // (4 * features)
    folder = Path(tempfile.mkdtemp(prefix="fedge-footprint-memmap-"))
    try:
        x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32,
                                      shape=(rows, features))
        block = np.random.default_rng(0).standard_normal((512, features)).astype(np.float32)
        for begin in range(0, rows, len(block)):
            x[begin : begin + len(block)] = block[: rows - begin]
        x.flush()
        del x
        np.save(folder / "y.npy", np.arange(rows) % 4)
        done = subprocess.run([sys.executable, "-c", MEMMAP_TRAIN, str(folder / "x.npy"),
                               str(folder / "y.npy")], env={**_env(), "OPENBLAS_NUM_THREADS":
                                                            "1"},
                              capture_output=True, text=True, check=True)
        start, peak, hwm, batches, wall = (float(v) for v in done.stdout.split())
        return {"file_mb": round((folder / "x.npy").stat().st_size / 2**20, 1),
                "samples": rows, "features": features, "batches": int(batches),
                "rss_anon_mb_start": round(start, 1), "rss_anon_mb_peak": round(peak, 1),
                "rss_anon_growth_mb": round(peak - start, 1),
                "vm_hwm_mb": round(hwm, 1), "wall_s": round(wall, 1),
                "note": "vm_hwm_mb counts the file's pages the kernel cached in the mapping; "
                        "it may drop them when memory is short, unlike anonymous memory"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def qemu_figures(folder: Path) -> dict:
    files = sorted(folder.glob("figures-*.json")) if folder.is_dir() else []
    if not files:
        return {"note": f"no figures-*.json in {folder}: run scripts/pi_os_check.py "
                        "(needs root and qemu-user-static) to add them"}
    keep = ("arch", "route", "install_mib", "debian_deps_mib", "import_s", "numpy_import_s",
            "import_ratio", "device_rss_mb_peak", "accuracy", "model_versions")
    figures: dict[str, object] = {}
    for path in files:
        data = json.loads(path.read_text())
        figures[data["arch"]] = {
            **{k: data.get(k) for k in keep},
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)),
            "file": str(path)}
    figures["note"] = "under qemu-user: RSS includes the emulator, times are emulated"
    return figures


def main() -> None:
    args = _arguments()
    try:
        print(json.dumps(measure(args), indent=2))
    except (RuntimeError, subprocess.CalledProcessError) as exc:  # e.g. no mosquitto
        raise SystemExit(f"footprint: {exc}") from None
    finally:
        shutil.rmtree(PYCACHE, ignore_errors=True)


def measure(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    began = time.monotonic()
    compile_bytecode()
    rss = {**device_rss(args.rounds), **baseline_rss()}
    imports = import_times(args.repeats)
    result = {
        **rss,
        "device_rss_over_numpy_mb": round(rss["device_rss_mb_peak"] - rss["numpy_rss_mb_peak"],
                                          1),
        "device_rss_over_dependencies_mb": round(
            rss["device_rss_mb_peak"] - rss["dependencies_rss_mb_peak"], 1),
        "target_rss_mb": TARGET_RSS_MB,
        "rss_target_met": rss["device_rss_mb_peak"] <= TARGET_RSS_MB,
        **imports,
        "target_import_ratio": TARGET_IMPORT_RATIO,
        "import_target_met": imports["import_ratio"] <= TARGET_IMPORT_RATIO,
        "loaded": loaded_modules(),
        **install_size(),
        "memmap_training": memmap_training(args.memmap_mb) if args.memmap_mb > 0 else None,
        "qemu": qemu_figures(args.qemu_dir),
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "loadavg_before": [round(v, 2) for v in load_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "wall_s": round(time.monotonic() - began, 1),
    }
    return result


if __name__ == "__main__":
    main()
