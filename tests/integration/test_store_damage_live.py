"""A store damaged after a SIGKILL, as `fedge aggregator serve` meets it.

A federation over real mosquitto runs against `fedge aggregator serve`, which is killed
with SIGKILL, so its recent commits are only in the WAL (nothing checkpointed them).
Then each kind of damage, on its own copy of the files: the service refuses with one
line, `check` says what is lost, `recover` backs up and rebuilds, and the service starts
again; every update a device got an ack for is either in the store or counted as lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.store_seal import read_seal, seal_path
from tests.integration.fedge_process import run_fedge
from tests.integration.fleet import FEDERATION, Digits, Running, make_client, wait_until

pytestmark = pytest.mark.integration
DB = "aggregator.sqlite3"


def _config(folder: Path, port: int, sizes: list[int]) -> Path:
    path = folder / "aggregator.toml"
    path.write_text(
        f'federation = "{FEDERATION}"\nport = {port}\nrounds = 100\n'
        f'db_path = "{folder / DB}"\npresence_settle_s = 0.2\n[model]\nsizes = {sizes}\n'
        f'[train]\nepochs = 1\n[sync]\ntarget_updates = 3\nround_timeout_s = 30\n')
    return path


def _serve(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "aggregator", "serve",
                             "--exit-when-done", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cut_wal(fraction: float) -> Callable[[Path], None]:
    def cut(db: Path) -> None:
        wal = Path(f"{db}-wal")
        os.truncate(wal, int(wal.stat().st_size * fraction))
    return cut


def _garble_wal(db: Path) -> None:
    wal = Path(f"{db}-wal")
    data = bytearray(wal.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes((i * 7 + 3) % 256 for i in range(4096))
    wal.write_bytes(bytes(data))


def _flip_header(db: Path) -> None:
    data = bytearray(db.read_bytes())
    for i in range(16):  # "SQLite format 3\0"
        data[i] ^= 0x5A
    db.write_bytes(bytes(data))


def _checkpoint(db: Path) -> int:
    """Move the WAL into the main file, as a clean stop does; the latest version."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return conn.execute("SELECT MAX(version) FROM models").fetchone()[0]
    finally:
        conn.close()


def _flip_in_blob(db: Path, version: int) -> None:
    """One flipped byte inside a model blob, in the file itself (not through SQLite)."""
    conn = sqlite3.connect(db)
    try:
        blob = conn.execute("SELECT blob FROM models WHERE version=?", (version,)).fetchone()[0]
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    at = data.find(blob[-64:])  # the blob's tail: past msgpack's common header bytes
    assert at > 0 and data.find(blob[-64:], at + 1) < 0
    data[at + 10] ^= 0x01
    db.write_bytes(bytes(data))


WAL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "deleted WAL": lambda db: Path(f"{db}-wal").unlink(),
    "emptied WAL": _cut_wal(0.0),
    "half a WAL": _cut_wal(0.5),
    "garbled WAL": _garble_wal,
}
RECOVERED = ("deleted WAL", "half a WAL")  # recover and serve again after these


def _killed_federation(mosquitto, folder: Path) -> tuple[Path, set[str], int]:
    """(config, nonces of acked updates, updates the seal records) after a SIGKILL."""
    data = Digits(devices=3)
    config = _config(folder, mosquitto.port, data.sizes)
    clients = [make_client(mosquitto, folder, data, i, ack_timeout_s=1.0) for i in range(3)]
    aggregator = _serve(config)
    devices = [Running(c.run, f"d{i}") for i, c in enumerate(clients)]
    try:
        wait_until(lambda: min(c.model_version or 0 for c in clients) >= 3, 90,
                   "three model versions on every device")
    finally:
        aggregator.kill()  # SIGKILL: the WAL is not checkpointed
        aggregator.wait(10)
        for run in devices:
            run.halt()
    acked = {nonce for c in clients for nonce, status in c.stats.acked
             if status in ("accepted", "late", "duplicate")}
    return config, acked, read_seal(seal_path(folder / DB)).updates


def _copy(live: Path, folder: Path, port: int, sizes: list[int]) -> Path:
    folder.mkdir()
    for name in (DB, f"{DB}-wal", f"{DB}-shm", f"{DB}.seal"):
        if (live / name).exists():
            shutil.copy2(live / name, folder / name)
    return _config(folder, port, sizes)


def _refused(config: Path) -> str:
    """`serve` must refuse with exit 2 and one line naming the store and the way out."""
    done = run_fedge("aggregator", "serve", "--config", str(config), timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("fedge aggregator serve: refusing to start: the store "
                               f"{config.parent / DB} is damaged: ")
    assert f"fedge aggregator recover --config {config}" in lines[0]
    return lines[0]


def _starts(config: Path) -> None:
    """`serve` gets past its checks (prints its start line), then stops on SIGTERM."""
    process = _serve(config)
    try:
        assert process.stderr is not None
        seen = []
        while len(seen) < 20 and not any("fedge aggregator: federation" in s for s in seen):
            seen.append(process.stderr.readline())  # INFO lines may come first
        assert "fedge aggregator: federation" in seen[-1], "".join(seen)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    # 0, or -SIGTERM when the signal came before `serve` set up its handler
    assert process.returncode in (0, -signal.SIGTERM)


def test_a_damaged_store_is_refused_checked_and_recovered(mosquitto, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    sizes = Digits(devices=3).sizes
    _, acked, sealed = _killed_federation(mosquitto, live)
    assert acked and sealed >= len(acked)
    assert Path(live / f"{DB}-wal").stat().st_size > 0

    for name, damage in WAL_DAMAGE.items():
        config = _copy(live, tmp_path / name.replace(" ", "-"), mosquitto.port, sizes)
        damage(config.parent / DB)
        wal = Path(config.parent / f"{DB}-wal")
        damaged_wal = wal.read_bytes() if wal.exists() else b""
        refusal = _refused(config)
        checked = run_fedge("aggregator", "check", "--config", str(config), "--json",
                            timeout=60)
        assert checked.returncode == 1, checked.stderr
        report = json.loads(checked.stdout)
        held, lost = report["updates"], report["lost_updates"]
        assert lost > 0 and held + lost == sealed, (name, report)
        assert held + lost >= len(acked)  # no acked update is gone without being counted
        assert f"the seal records {sealed} acknowledged updates; the store holds {held}: " \
               f"{lost} lost" in refusal, (name, refusal)

        if name not in RECOVERED:
            continue  # the same recovery as another case: spare the subprocesses
        recovered = run_fedge("aggregator", "recover", "--config", str(config), timeout=60)
        assert recovered.returncode == 0, (name, recovered.stdout, recovered.stderr)
        assert f"lost for good: {lost} acknowledged updates" in recovered.stdout
        backup = next(config.parent.glob(f"{DB}.damaged-*"))
        assert (backup / f"{DB}.seal").read_bytes() == (live / f"{DB}.seal").read_bytes()
        # serve and check read the store without checkpointing: the WAL is as damaged
        backed_up = backup / f"{DB}-wal"
        assert (backed_up.read_bytes() if backed_up.exists() else b"") == damaged_wal
        _starts(config)  # its start-up check passes now

    config = _copy(live, tmp_path / "model-blob", mosquitto.port, sizes)
    latest = _checkpoint(config.parent / DB)
    _flip_in_blob(config.parent / DB, latest)
    assert f"the model blob of version {latest} fails its stored SHA-256" in _refused(config)
    recovered = run_fedge("aggregator", "recover", "--config", str(config), timeout=60)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert f"dropped model versions {latest}..{latest}" in recovered.stdout
    assert "3 of their updates are pending again" in recovered.stdout
    _starts(config)

    # The main file matters once the WAL is checkpointed into it (as at a clean stop);
    # before that SQLite reads page 1 from the WAL, and a damaged header there is moot.
    config = _copy(live, tmp_path / "main-file", mosquitto.port, sizes)
    _checkpoint(config.parent / DB)
    clean = config.parent / "clean.sqlite3"
    shutil.copy2(config.parent / DB, clean)
    _flip_header(config.parent / DB)
    assert "SQLite cannot read" in _refused(config)
    checked = run_fedge("aggregator", "check", "--config", str(config), timeout=60)
    assert checked.returncode == 1 and "unreadable: SQLite cannot read" in checked.stdout
    recovered = run_fedge("aggregator", "recover", "--config", str(config), timeout=60)
    assert recovered.returncode == 1 and "Restore the store from a backup" in recovered.stdout
    assert "Traceback" not in recovered.stderr + checked.stderr
    shutil.copy2(clean, config.parent / DB)  # the user restores the main file
    _starts(config)
