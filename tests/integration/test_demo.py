"""`fedge demo` as a user runs it: a subprocess, its JSON summary on the last line."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.fedge_process import run_fedge

pytestmark = pytest.mark.integration
REQUIRED = {"final_accuracy", "rounds", "model_versions", "devices", "bytes_up", "bytes_down",
            "wall_s", "round_wall_s_median", "train_s_median", "broker", "mode"}


def _demo(*args: str, tmp_path) -> dict:
    done = run_fedge("demo", "--json", "--workdir", str(tmp_path), *args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary.keys() >= REQUIRED
    assert "[" in done.stderr and "final accuracy" in done.stderr  # progress bar and summary
    return summary


DENSE_UPDATE = 99_985 * 4  # bytes of one float32 update of the demo's MLP


def test_demo_sync_on_mosquitto_compresses_both_ways(tmp_path):
    s = _demo("--devices", "3", "--rounds", "3", "--broker", "mosquitto", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["devices"], s["model_versions"]) == (
        "mosquitto", "sync", 3, 3)
    assert s["final_accuracy"] > 0.85
    assert s["uplink_codec"].startswith("topk") and s["uplink_compression"] > 100
    assert s["update_bytes"] < 9 * DENSE_UPDATE / 100  # 9 updates, each >100x smaller
    # Version 0 comes whole; versions 1-3 reach each device as q8 deltas, rebuilt bit for
    # bit (a mismatch would make the device fetch the full model instead).
    assert s["models_via_delta"] == 3 * 3
    assert s["bytes_down"] < 3 * (DENSE_UPDATE + 3 * DENSE_UPDATE / 3.5)


def test_demo_dense_sends_float32_both_ways(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--uplink", "dense", "--downlink", "full",
              tmp_path=tmp_path)
    assert s["uplink_codec"] == "dense-f32" and s["models_via_delta"] == 0
    assert s["bytes_up"] > 6 * DENSE_UPDATE  # 2 rounds x 3 devices of float32 deltas
    assert s["bytes_down"] >= 3 * 3 * DENSE_UPDATE  # 3 versions to 3 devices


def test_demo_async_on_the_embedded_broker(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--mode", "async", "--buffer-size", "2",
              "--broker", "embedded", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["model_versions"]) == ("embedded", "async", 3)
    assert s["final_accuracy"] > 0.7


def test_demo_personalize_reports_global_vs_personal_accuracy(tmp_path):
    s = _demo("--devices", "3", "--rounds", "3", "--personalize", tmp_path=tmp_path)
    p = s["personal"]
    assert p["mode"] == "layers" and set(p["per_device"]) == {f"device-{i}" for i in range(3)}
    # the output layer stays on each device: its own model beats the shared one
    assert p["personal_accuracy"] > 0.85 and p["personal_accuracy"] > p["global_accuracy"]
    assert "clusters" not in s


def test_demo_clusters_reports_membership(tmp_path):
    s = _demo("--devices", "4", "--rounds", "3", "--clusters", "2", tmp_path=tmp_path)
    c = s["clusters"]
    assert c["k"] == 2 and set(c["membership"]) == {f"device-{i}" for i in range(4)}
    assert sum(c["sizes"].values()) == 4 and len(c["test_accuracy"]) == 2
    assert round(s["final_accuracy"], 4) == max(c["test_accuracy"]) and "personal" not in s


def test_demo_personal_layers_that_name_no_tensor_fail_in_one_line(tmp_path):
    done = run_fedge("demo", "--workdir", str(tmp_path), "--devices", "2", "--rounds", "1",
                     "--personalize", "--personal-layers", "head.", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "personalize.personal_layers: 'head.' names no tensor" in done.stderr


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_with_sites_runs_two_tiers_and_reports_each(tmp_path, broker):
    s = _demo("--sites", "2", "--devices-per-site", "2", "--rounds", "2", "--broker", broker,
              tmp_path=tmp_path)
    assert (s["sites"], s["devices"], s["model_versions"]) == (2, 4, 2)
    assert ("bridged" in s["broker"]) == (broker == "mosquitto")
    top, *sites = s["tiers"]
    assert (top["tier"], top["versions"], top["sites"]) == ("top", 2, 2) and top["bytes_up"] > 0
    assert [t["site"] for t in sites] == ["site-0", "site-1"]
    # per top version: the adopted model, then --site-versions (2) rounds; then the last
    assert all(t["devices"] == 2 and t["versions"] == 2 * 3 + 1 for t in sites)
    assert s["final_accuracy"] > 0.6


def test_demo_reports_bad_arguments_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "demo", "--devices", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "devices" in done.stderr


def test_demo_secure_runs_over_tls_with_acls_and_signatures(tmp_path):
    s = _demo("--devices", "2", "--rounds", "2", "--secure", tmp_path=tmp_path)
    assert s["secure"] is True and s["broker"] == "mosquitto"
    assert s["model_versions"] == 2 and s["rejected_updates"] == 0
    conf = Path(s["broker_config"]).read_text()
    assert Path(s["broker_config"]).is_relative_to(tmp_path)  # kept with the store
    assert "allow_anonymous false" in conf and "certfile" in conf and "acl_file" in conf


def _refused(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "demo", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr


def test_demo_secagg_makes_versions_from_secure_rounds(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--secagg", tmp_path=tmp_path)
    assert s["model_versions"] == 2 and s["secagg"]["secure_rounds"] == 2
    assert s["secagg"]["contributors_per_round"] == [3, 3]
    assert s["secagg"]["dropouts_per_round"] == [0, 0]
    # each device sends at least its masked vector (99,985 words) in a round
    assert s["secagg"]["bytes_per_device_round"] > 99_985 * s["secagg"]["modulus_bits"] / 8
    assert s["uplink_codec"].startswith("secagg") and s["privacy"] is None
    assert s["final_accuracy"] > 0.5  # it learns: the sum came out unmasked


def test_demo_distributed_dp_reports_dp_accountings_epsilon(tmp_path):
    from dp_accounting import dp_event, rdp

    s = _demo("--devices", "3", "--rounds", "2", "--secagg", "--dp", "distributed",
              "--noise-multiplier", "0.7", tmp_path=tmp_path)
    p = s["privacy"]
    assert p["mode"] == "distributed" and p["budget_stopped_training"] is False
    # every device is invited every round (q = 1) and all three noise shares came (z as set)
    assert p["sampling_rate_per_version"] == [1.0, 1.0]
    assert p["accounted_noise_multiplier_per_version"] == pytest.approx([0.7, 0.7])
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.PoissonSampledDpEvent(1.0, dp_event.GaussianDpEvent(0.7)),
                       s["model_versions"])
    assert p["epsilon"] == pytest.approx(accountant.get_epsilon(p["delta"]), rel=1e-9)
    assert p["delta"] == 1e-5 and p["epsilon"] > 0


def test_demo_central_dp_stops_at_the_epsilon_budget(tmp_path):
    from dp_accounting import dp_event, rdp

    target = 8.0  # z = 1, q = 1: epsilon 7.1 after two versions, 9.0 after three
    s = _demo("--devices", "3", "--rounds", "10", "--dp", "central", "--noise-multiplier",
              "1.0", "--target-epsilon", str(target), tmp_path=tmp_path)
    p = s["privacy"]
    assert p["budget_stopped_training"] is True and "budget" in p["stopped_reason"]
    assert 0 < s["model_versions"] < 10 and p["epsilon"] <= target

    def eps(steps: int) -> float:
        accountant = rdp.RdpAccountant()
        accountant.compose(dp_event.PoissonSampledDpEvent(
            1.0, dp_event.GaussianDpEvent(1.0)), steps)
        return accountant.get_epsilon(p["delta"])

    # it stopped exactly where one more version would have passed the budget
    assert eps(s["model_versions"]) <= target < eps(s["model_versions"] + 1)


def test_demo_attackers_against_a_robust_strategy(tmp_path):
    s = _demo("--devices", "4", "--rounds", "2", "--attackers", "1", "--attack", "scale10",
              "--strategy", "median", tmp_path=tmp_path)
    assert (s["strategy"], s["attackers"], s["attack"]) == ("median", ["device-0"], "scale10")
    assert s["model_versions"] == 2 and s["final_accuracy"] > 0.5


def test_demo_rollout_catches_a_bad_candidate_while_production_keeps_serving(tmp_path):
    summary = _demo("--devices", "5", "--rounds", "5", "--rollout", "--bad-candidate", "2",
                    tmp_path=tmp_path)
    rollout = summary["rollout"]
    bad = rollout["bad_version"]
    assert rollout["stages"][str(bad)] == "rolled_back" and bad in rollout["rolled_back"]
    [why] = [d["reason"] for d in rollout["decisions"] if d["version"] == bad]
    assert "worse than production" in why
    assert len(rollout["canary_reports"][str(bad)]) == 2  # caught by its two canaries
    assert rollout["bad_version_served_by"] == []
    assert str(bad + 1) in rollout["copies"]  # production went on from a copy
    production = rollout["production"]
    assert rollout["stages"][str(production)] == "production"
    assert set(rollout["served_at_end"].values()) == {production}


@pytest.mark.parametrize(("args", "words"), [
    (("--secagg", "--mode", "async"), ("--secagg", "--mode sync")),
    (("--secagg", "--uplink", "q8"), ("--secagg", "--uplink")),
    (("--dp", "distributed"), ("--dp distributed", "--secagg")),
    (("--secagg", "--strategy", "median"), ("strategy", "median")),
    (("--attackers", "5"), ("--attackers",)),
    (("--profile", "diurnal", "--day-s", "0"), ("--day-s must be a number > 0, not 0.0",)),
    (("--day-s", "-5"), ("--day-s must be a number > 0, not -5.0",)),
    (("--mode", "async", "--buffer-size", "0"), ("--buffer-size must be >= 1, not 0",)),
    (("--rounds", "0"), ("--rounds must be >= 1, not 0",)),
    (("--lr", "nan"), ("--lr must be a number > 0",)),
    (("--momentum", "1"), ("--momentum must be 0 or more and below 1",)),
    (("--clusters", "0"), ("--clusters must be 1 to 64, not 0",)),
    (("--clusters", "2", "--dp", "central"), ("--clusters", "--dp")),
    (("--clusters", "2", "--rollout"), ("--clusters", "--rollout")),
    (("--weighting", "loss", "--strategy", "median"), ("weighting = 'loss'", "mean-based")),
    (("--sites", "2", "--secure"), ("--sites", "--secure")),
    (("--sites", "2", "--devices-per-site", "0"), ("--devices-per-site must be >= 1",)),
    (("--bad-candidate", "2"), ("--bad-candidate needs --rollout",)),
    (("--rollout", "--bad-candidate", "11"), ("--bad-candidate must be 1 to --rounds",)),
    (("--rollout", "--mode", "async"), ("--rollout needs --mode sync",)),
])
def test_demo_refuses_flags_that_do_not_work_together(args, words):
    stderr = _refused("--devices", "5", *args)
    assert all(w in stderr for w in words), stderr


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_sigterm_stops_the_demo_and_the_broker_it_started(tmp_path):
    """A demo ended by SIGTERM (a service manager, `kill`) must not leave mosquitto behind."""
    import os
    import signal
    import time

    if not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("needs mosquitto: the embedded broker runs inside the demo's process")
    demo = subprocess.Popen([sys.executable, "-m", "fedge.cli", "demo", "--devices", "2",
                             "--rounds", "500", "--broker", "mosquitto",
                             "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        brokers: list[int] = []
        while not brokers and time.monotonic() < deadline:
            brokers = [k for k in _children(demo.pid)
                       if "mosquitto" in Path(f"/proc/{k}/cmdline").read_bytes().decode()]
            time.sleep(0.1)
        assert brokers, "the demo started no mosquitto"
        time.sleep(2)  # the federation is under way
        demo.send_signal(signal.SIGTERM)
        _out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    left = []
    for pid in brokers:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
            left.append(pid)
            os.kill(pid, signal.SIGTERM)  # ours (the demo's child): do not leak it on failure
    assert not left, "mosquitto left running"
    assert demo.returncode == 130 and b"interrupted" in err


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_the_secure_demo_leaves_nothing_in_the_temporary_folder():
    """Without --workdir the store, the device state and the broker's files (the CA's
    private key among them) are removed at the end."""
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("fedge-demo*")}
    done = run_fedge("demo", "--json", "--devices", "3", "--rounds", "1", "--secure",
                     timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["workdir"] is None and "broker_config" not in summary
    assert "removed with the run" in done.stderr
    assert {p.name for p in tmp.glob("fedge-demo*")} <= before
