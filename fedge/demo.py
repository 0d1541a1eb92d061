"""`fedge demo`: a whole federation on one machine.

The demo is the gateway's real AggregatorConfig (fedge/demo_flags.py maps the flags onto
it) plus a DemoFleet: N devices, each an EdgeClient with its own MQTT connection and only
its own Dirichlet share of the digits data, whose eligibility follows a simulated
profile. fedge.federation builds and runs it.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator, VersionReport
from aggregator.strategy import Strategy
from edge_client.client import ClientConfig
from edge_client.predictor import Predictor
from edge_client.training import Trainer
from fedge.broker import start_broker
from fedge.demo_drift import DriftingApp, drift_summary
from fedge.demo_secure import SecureGateway
from fedge.demo_summary import summarize
from fedge.digits_job import DigitsJob
from fedge.federation import Federation, FederationResult
from fedge.fleet import SimulatedFleet
from fedge.poisoning import poisoned
from fedge.profiles import Diurnal, Profile, Stragglers, profile_by_name
from fedge.rollout_demo import ServedLog, corrupt_nth_candidate, rollout_summary, split_holdout

if TYPE_CHECKING:
    from aggregator.web import DashboardServer


@dataclass
class DemoFleet:
    """What the demo simulates around the gateway: its devices, their data and habits."""

    devices: int = 5
    rounds: int = 10  # rounds of device work; the aggregator's `rounds` counts versions
    hidden: int = 1333  # the MLP's hidden units
    alpha: float = 0.5  # Dirichlet label skew of the devices' shares
    profile: str = "always"  # device behaviour: "always" eligible, "diurnal" days, or
    #                          "stragglers" (always eligible, log-normal speeds)
    day_s: float = 20.0  # diurnal: one simulated day in wall seconds
    broker: str = "auto"  # auto | mosquitto | embedded
    secure: bool = False  # TLS, passwords and ACLs at the broker; signed messages
    workdir: Path | None = None  # kept after the run; a temporary folder if None
    timeout_s: float = 600.0
    dashboard_port: int | None = None  # serve the dashboard on 127.0.0.1 (0: a free port)
    attackers: int = 0  # the first K devices send poisoned updates (fedge/poisoning.py)
    attack: str = "sign_flip"  # a name in fedge.poisoning.ATTACKS
    sites: int = 0  # > 0: two tiers, `devices` split into sites (fedge/tiers/demo.py)
    devices_per_site: int = 5
    site_versions: int = 2  # site versions per top version ([upper] every_versions)
    drift_at: int | None = None  # from this round on, half the devices' inputs shift
    rollout: bool = False  # canaries on held-out data before serving (fedge/rollout_demo.py)
    bad_candidate: int | None = None  # with rollout: the N-th candidate is corrupted


@dataclass
class Demo:
    aggregator: AggregatorConfig  # its db_path is put in the run's workdir
    fleet: DemoFleet


@dataclass
class DemoRun:
    result: FederationResult
    aggregator: Aggregator
    broker_kind: str
    wall_s: float
    dashboard_url: str | None
    drift: dict[str, Any] | None = None  # --drift-at: what shifted, what it opened
    served: ServedLog | None = None  # with --rollout: what each device served


def run_demo(demo: Demo,
             on_version: Callable[[VersionReport], None] | None = None) -> dict[str, Any]:
    """Run the federation to the end and return the summary."""
    fleet = demo.fleet
    temporary = fleet.workdir is None  # removed at the end, as is the broker's folder
    workdir = Path(fleet.workdir or tempfile.mkdtemp(prefix="fedge-demo-"))
    secure = SecureGateway(workdir / "security", fleet.devices) if fleet.secure else None
    if fleet.sites:  # two tiers of aggregators
        from fedge.tiers.demo import run_tiered_demo

        try:
            summary = run_tiered_demo(demo, workdir, on_version)
        finally:
            if temporary:
                shutil.rmtree(workdir, ignore_errors=True)
        summary["workdir"] = None if temporary else str(workdir)
        return summary
    try:
        run = federate(demo, workdir, secure=secure, on_version=on_version)
        summary = summarize(demo, run.result, run.aggregator, run.broker_kind, run.wall_s,
                            workdir)
        if run.served is not None:
            summary["rollout"] = rollout_summary(run.aggregator.config.db_path,
                                                 fleet.bad_candidate, run.served)
        if run.dashboard_url:
            summary["dashboard_url"] = run.dashboard_url
        if run.drift is not None:
            summary["drift"] = run.drift
    finally:
        if secure is not None:  # its CA key must not stay behind in /tmp
            secure.clean_up(None if temporary else workdir / "broker")
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    if secure is not None and not temporary:
        summary["broker_config"] = str(workdir / "broker" / secure.files.conf.name)
    summary["workdir"] = None if temporary else str(workdir)
    return summary


def federate(demo: Demo, workdir: Path, *, secure: SecureGateway | None = None,
             strategy: Strategy | None = None,
             on_version: Callable[[VersionReport], None] | None = None) -> DemoRun:
    """The demo's federation, run to the end; `strategy` replaces the configured one."""
    fleet = demo.fleet
    seed = demo.aggregator.seed
    job = DigitsJob.split(fleet.devices, fleet.alpha, seed, fleet.hidden)
    started = time.monotonic()
    broker_handle = secure.start_broker() if secure else start_broker(fleet.broker)
    with broker_handle as broker, _dashboard(fleet.dashboard_port, workdir) as url, \
            Federation(broker) as federation:
        config = dataclasses.replace(demo.aggregator, db_path=workdir / "aggregator.sqlite3")
        if secure:
            config.security, config.broker_auth = secure.aggregator()
        evaluate = job.evaluator()
        aggregator = federation.add_aggregator(
            config, job.initial_weights(), job.arch, evaluate=evaluate, strategy=strategy,
            on_version=on_version)
        served = ServedLog() if fleet.rollout else None
        if fleet.bad_candidate is not None:
            aggregator.core.versions.tamper = corrupt_nth_candidate(fleet.bad_candidate)
        simulated = SimulatedFleet(_profile(fleet, seed), workdir, fleet.devices)
        app = (None if fleet.drift_at is None else
               DriftingApp(fleet.drift_at, lambda: aggregator.version, seed=seed))
        for i, (xs, ys) in enumerate(job.shards):
            device = ClientConfig(device_id=f"device-{i}", federation=config.federation,
                                  state_dir=workdir / f"device-{i}", eligibility_check_s=0.2,
                                  deadline_margin_s=0.25)
            if secure:
                device.security, device.broker_auth = secure.device(i, aggregator)
            trainer: Trainer = job.device_trainer(i)
            if i < fleet.attackers:
                trainer = poisoned(trainer, fleet.attack)
            holdout = None
            if served is not None:  # a fifth of the shard kept for canary evaluations
                xs, ys, holdout = split_holdout(xs, ys)
            predictor = Predictor() if app is not None else None
            client = federation.add_device(
                device, simulated.trainer(i, trainer), xs, ys, policy=simulated.policy(i),
                on_model=None if served is None else served.hook(device.device_id),
                predictor=predictor, holdout=holdout)
            if app is not None and predictor is not None:
                app.add(client, predictor, xs, ys)
            if secure and client.identity is not None:  # security on: the device made one
                aggregator.store.enroll(device.device_id, client.identity.public_text)
        federation.add_helper(simulated.run, "simulator")
        if app is not None:
            federation.add_helper(app.run, "drifting app")
        result = federation.run(fleet.timeout_s)
        drift = None if app is None else drift_summary(app, config.db_path)
        return DemoRun(result, aggregator, broker.kind, time.monotonic() - started, url,
                       drift, served)


@contextmanager
def _dashboard(port: int | None, workdir: Path) -> Iterator[str | None]:
    """The gateway's dashboard over the demo's store while the federation runs.

    The URL goes to stderr at once, since with port 0 nobody could guess it, and stdout
    stays clean for --json.
    """
    if port is None:
        yield None
        return
    # the store's path as federate sets it; the web app opens it per request
    server = _serve_dashboard(port, workdir / "aggregator.sqlite3")
    print(f"dashboard: {server.url}", file=sys.stderr, flush=True)
    try:
        yield server.url
    finally:
        server.stop()


def _serve_dashboard(port: int, db_path: Path) -> DashboardServer:
    """Without tokens, so only on 127.0.0.1. aggregator.web is imported here, not at the
    top, because the demo extra alone has no flask."""
    if not 0 <= port <= 65535:  # waitress would quietly wrap a larger number around
        raise ValueError(f"the dashboard port must be 0 to 65535, not {port}")
    try:
        from aggregator.web import create_app, serve_dashboard
    except ImportError as exc:
        raise RuntimeError("--dashboard needs flask, waitress and prometheus-client: "
                           "pip install 'fedge[aggregator]'") from exc
    try:
        return serve_dashboard(create_app(db_path, None, None), "127.0.0.1", port)
    except OSError as exc:  # the port is taken
        raise RuntimeError(f"cannot serve the dashboard on 127.0.0.1:{port}: {exc}") from exc


def _profile(fleet: DemoFleet, seed: int) -> Profile:
    if fleet.profile == "diurnal":
        return Diurnal(period_s=fleet.day_s, seed=seed)
    if fleet.profile == "stragglers":
        return Stragglers(seed=seed, devices=fleet.devices)
    return profile_by_name(fleet.profile, seed)
