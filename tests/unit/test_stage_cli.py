"""`fedge aggregator rollback|promote|pin|stages` against a store, without the service:
commands are queued for it; mistakes get one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aggregator.lifecycle import Command
from aggregator.store import Store
from fedge.cli import main


def _config(tmp_path: Path, versions: int = 2) -> Path:
    db = tmp_path / "agg.sqlite3"
    store = Store(db)
    for v in range(versions):
        store.add_model(v, f"m{v}".encode(), f"s{v}", {"round": v})
    store.migrate_stages()
    store.close()
    path = tmp_path / "aggregator.toml"
    path.write_text(f'db_path = "{db}"\n')
    return path


def test_rollback_is_queued_with_who_asked(tmp_path, capsys: pytest.CaptureFixture[str]):
    config = _config(tmp_path)
    assert main(["aggregator", "rollback", "--to", "0", "--config", str(config)]) == 0
    assert "requested rollback 0" in capsys.readouterr().out
    store = Store(tmp_path / "agg.sqlite3")
    [request] = store.waiting_stage_requests()
    assert request.command is Command.ROLLBACK and request.actor.startswith("cli:")
    store.close()


def test_stages_prints_each_version_and_the_audit(tmp_path, capsys):
    config = _config(tmp_path)
    assert main(["aggregator", "stages", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stages"] == {"0": "production", "1": "production"}
    assert {a["actor"] for a in shown["audit"]} == {"migration"}


@pytest.mark.parametrize("argv", [["promote", "7"], ["pin", "-1"]])
def test_an_unknown_version_is_one_line_and_exit_2(tmp_path, capsys, argv):
    config = _config(tmp_path)
    assert main(["aggregator", *argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "there is no model version" in err and len(err.strip().splitlines()) == 1


def test_a_missing_store_is_named(tmp_path, capsys):
    config = tmp_path / "aggregator.toml"
    config.write_text(f'db_path = "{tmp_path / "none.sqlite3"}"\n')
    assert main(["aggregator", "promote", "1", "--config", str(config)]) == 2
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()


def test_a_device_config_may_name_its_held_out_data(tmp_path):
    from fedge.roles import build_device

    rng = np.random.default_rng(0)
    for name, n in (("d", 40), ("h", 10)):
        np.savez(tmp_path / f"{name}.npz", x=rng.random((n, 64), dtype=np.float32),
                 y=rng.integers(0, 3, n))
    config = tmp_path / "device.toml"
    config.write_text(f'device_id = "d"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[model]\nsizes = [64, 4, 3]\n'
                      f'[data]\npath = "{tmp_path / "d.npz"}"\n'
                      f'holdout = "{tmp_path / "h.npz"}"\n')
    client = build_device(config)
    assert client.holdout is not None and len(client.holdout[0]) == 10
