"""`fedge demo`: a whole federation on one machine.

This is the fleet simulator, the one place that composes the device SDK and the
aggregator: a broker, an aggregator and N devices, each an EdgeClient with its own MQTT
connection and only its own Dirichlet share of the digits data.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.config import AggregatorConfig, AsyncConfig, DownlinkConfig, SyncConfig
from aggregator.privacy.config import PrivacyConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.service import STOPPED_NOTE, Aggregator, VersionReport
from aggregator.store import Store
from aggregator.strategy import STRATEGIES, StrategyConfig
from edge_client.client import ClientConfig, EdgeClient
from edge_client.shared.codecs import DENSE, CodecConfig
from edge_client.shared.protocol import TrainConfig
from edge_client.shared.secagg.graph import MIN_PARTICIPANTS
from edge_client.shared.security import AggregatorSecurity, BrokerAuth, DeviceSecurity
from edge_client.training import Trainer, mlp_trainer
from fedge.broker import MosquittoBroker, free_port, start_broker
from fedge.codec_spec import describe, parse_codec
from fedge.datasets import dirichlet_partition, load_digits, stratified_split
from fedge.fleet import SimulatedFleet
from fedge.poisoning import ATTACKS, poisoned
from fedge.profiles import Diurnal, Profile, profile_by_name

if TYPE_CHECKING:
    from aggregator.web import DashboardServer

log = logging.getLogger(__name__)


# The median L2 norm of a device's update over a run of the demo job without DP
# (benchmarks/privacy.py measured 0.497 with 5 devices and 0.463 with 10): a clip near it
# keeps the clipped mean close to the real one, and z = 0.5 kept 0.80 to 0.93 accuracy.
DEFAULT_DP_CLIP = 0.5
DP_MODES = ("off", "central", "distributed")


@dataclass
class DemoConfig:
    devices: int = 5
    rounds: int = 10  # rounds of device work: sync rounds, or rounds*devices async updates
    mode: str = "sync"
    hidden: int = 1333
    alpha: float = 0.5
    seed: int = 42
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.5
    buffer_size: int = 3  # async: aggregate every K updates
    uplink: str | None = None  # codec spec (fedge/codec_spec.py); None: the mode's default
    downlink: str = "q8"  # codec of the model deltas; "full" sends only whole models
    full_model: str = "f32"  # whole models as "f32" or "f16"
    profile: str = "always"  # device behaviour: "always" eligible, or "diurnal" days
    day_s: float = 20.0  # diurnal: one simulated day in wall seconds
    broker: str = "auto"  # auto | mosquitto | embedded
    secure: bool = False  # TLS, passwords and ACLs at the broker; signed messages
    workdir: Path | None = None
    timeout_s: float = 600.0
    dashboard_port: int | None = None  # serve the dashboard on 127.0.0.1 (0: a free port)
    secagg: bool = False  # secure aggregation of sync rounds (docs/secure-aggregation.md)
    dp: str = "off"  # differential privacy: "off", "central" or "distributed"
    noise_multiplier: float = 0.5  # z (docs/privacy.md)
    clip: float = DEFAULT_DP_CLIP  # C, the L2 bound on each device's update
    target_epsilon: float = 0.0  # stop before epsilon would pass this; 0: no budget
    strategy: str = "fedavg"  # any name in aggregator.strategy.STRATEGIES
    attackers: int = 0  # the first K devices send poisoned updates (fedge/poisoning.py)
    attack: str = "sign_flip"  # a name in fedge.poisoning.ATTACKS


@dataclass
class _Job:
    x_test: np.ndarray
    y_test: np.ndarray
    shards: list[tuple[np.ndarray, np.ndarray]]


# The most compression that kept the demo job at >= 0.95 in our runs (docs/compression.md):
# top-k 1% at 4 bits in sync rounds; buffered async is noisier (each version comes from
# three non-IID devices), and only 8-bit dense updates held 0.95 there in every run.
DEFAULT_UPLINK = {"sync": "topk=0.01,q4", "async": "q8"}
# Under central DP the noise covers every coordinate while a top-k 1% update clipped to C
# carries little of it: the demo job fell to 0.41 accuracy with topk=0.01,q4 and held
# 0.83 with q8 (0.85 dense) at z = 0.5, C = 0.5, 5 devices, 10 rounds.
DP_CENTRAL_UPLINK = "q8"


def uplink_spec(cfg: DemoConfig) -> str | None:
    """The update codec; None with --secagg, whose fixed-point encoding replaces it."""
    if cfg.secagg:
        return None
    if cfg.uplink is not None:
        return cfg.uplink
    return DP_CENTRAL_UPLINK if cfg.dp == "central" else DEFAULT_UPLINK[cfg.mode]


def check_demo(cfg: DemoConfig) -> None:
    """Refuse combinations that cannot run, with the flags named, before anything starts.

    The demo's own rules come first; then the aggregator's config is built, so that its
    checks (a robust strategy under DP or secure aggregation, Krum with too few devices)
    are refused here too rather than after the broker is up.
    """
    if cfg.devices < 1:
        raise ValueError(f"--devices must be >= 1, not {cfg.devices}")
    for flag, value in (("--rounds", cfg.rounds), ("--buffer-size", cfg.buffer_size),
                        ("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size)):
        if value < 1:  # the demo runs a fixed job: 0 rounds would never end
            raise ValueError(f"{flag} must be >= 1, not {value}")
    for flag, number in (("--day-s", cfg.day_s), ("--lr", cfg.lr), ("--alpha", cfg.alpha)):
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{flag} must be a number > 0, not {number}")
    if not 0 <= cfg.momentum < 1:
        raise ValueError(f"--momentum must be 0 or more and below 1, not {cfg.momentum}")
    if cfg.secagg and cfg.mode != "sync":
        raise ValueError("--secagg needs --mode sync: secure aggregation sums one round's "
                         "updates, and async buffers have no rounds")
    if cfg.secagg and cfg.uplink is not None:
        raise ValueError(f"--secagg replaces the uplink codec (devices send fixed-point "
                         f"integers under masks); leave out --uplink {cfg.uplink!r}")
    if cfg.secagg and cfg.devices < MIN_PARTICIPANTS:
        raise ValueError(f"--secagg needs at least {MIN_PARTICIPANTS} devices, "
                         f"not {cfg.devices}")
    if cfg.dp not in DP_MODES:
        raise ValueError(f"--dp must be one of {DP_MODES}, not {cfg.dp!r}")
    if cfg.dp == "distributed" and not cfg.secagg:
        raise ValueError("--dp distributed needs --secagg: each device adds a share of the "
                         "noise, which hides the mean only when the server sees no single "
                         "update")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {tuple(STRATEGIES)}, "
                         f"not {cfg.strategy!r}")
    if not 0 <= cfg.attackers < cfg.devices:
        raise ValueError(f"--attackers must be 0 to {cfg.devices - 1} (fewer than "
                         f"--devices), not {cfg.attackers}")
    if cfg.attack not in ATTACKS:
        raise ValueError(f"--attack must be one of {tuple(ATTACKS)}, not {cfg.attack!r}")
    try:
        _aggregator_config(cfg, "127.0.0.1", 1883, Path("unused"))
    except ValueError as exc:  # ConfigError is one; the message names the TOML keys
        raise ValueError(f"these demo flags do not work together: {exc}") from None


def model_versions(cfg: DemoConfig) -> int:
    """Versions to produce so that both modes get the same device work.

    A sync round takes one update from each device; in async mode a version takes
    `buffer_size` updates, so `rounds` rounds of work are rounds*devices/K versions.
    """
    if cfg.mode == "sync":
        return cfg.rounds
    return math.ceil(cfg.rounds * cfg.devices / min(cfg.buffer_size, cfg.devices))


def prepare_data(cfg: DemoConfig) -> _Job:
    """Digits, a stratified 20% test split, and a Dirichlet(alpha) split of the rest."""
    x, y = load_digits()
    x_train, y_train, x_test, y_test = stratified_split(x, y, 0.2, cfg.seed)
    parts = dirichlet_partition(y_train, cfg.devices, cfg.alpha, cfg.seed)
    return _Job(x_test, y_test, [(x_train[p], y_train[p]) for p in parts])


def run_demo(cfg: DemoConfig,
             on_version: Callable[[VersionReport], None] | None = None) -> dict[str, Any]:
    """Run the federation to the end and return the summary."""
    check_demo(cfg)
    job = prepare_data(cfg)
    sizes = [job.shards[0][0].shape[1], cfg.hidden, 10]
    temporary = cfg.workdir is None  # removed at the end, as is the broker's folder
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="fedge-demo-"))
    secure = _Secure(workdir / "security", cfg.devices) if cfg.secure else None
    try:
        summary = _federate(cfg, job, sizes, workdir, secure, on_version)
    finally:
        if secure is not None:  # its CA key must not stay behind in /tmp
            secure.clean_up(None if temporary else workdir / "broker")
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    if secure is not None and not temporary:
        summary["broker_config"] = str(workdir / "broker" / secure.files.conf.name)
    summary["workdir"] = None if temporary else str(workdir)
    return summary


def _federate(cfg: DemoConfig, job: _Job, sizes: list[int], workdir: Path,
              secure: _Secure | None,
              on_version: Callable[[VersionReport], None] | None) -> dict[str, Any]:
    started = time.monotonic()
    broker_handle = secure.start_broker() if secure else start_broker(cfg.broker)
    with broker_handle as broker, _dashboard(cfg.dashboard_port, workdir) as dashboard_url:
        agg_cfg = _aggregator_config(cfg, broker.host, broker.port, workdir)
        if secure:
            agg_cfg.security, agg_cfg.broker_auth = secure.aggregator()
        evaluator = mlp_trainer(sizes, seed=cfg.seed)

        def evaluate(weights: dict) -> dict[str, float]:
            evaluator.set_weights(weights)
            return evaluator.evaluate(job.x_test, job.y_test)

        aggregator = Aggregator(agg_cfg, initial_weights=mlp_trainer(sizes, cfg.seed)
                                .get_weights(), arch={"kind": "mlp", "sizes": sizes},
                                evaluate=evaluate, on_version=on_version)
        fleet = SimulatedFleet(_profile(cfg), workdir, cfg.devices)
        clients = []
        for i, (xs, ys) in enumerate(job.shards):
            config = ClientConfig(device_id=f"device-{i}", federation="demo",
                                  host=broker.host, port=broker.port,
                                  state_dir=workdir / f"device-{i}", eligibility_check_s=0.2)
            if secure:
                config.security, config.broker_auth = secure.device(i, aggregator)
            trainer: Trainer = mlp_trainer(sizes, seed=cfg.seed + 1 + i)
            if i < cfg.attackers:
                trainer = poisoned(trainer, cfg.attack)
            clients.append(EdgeClient(config, fleet.trainer(i, trainer), xs, ys,
                                      policy=fleet.policy(i)))
            identity = clients[-1].identity
            if secure and identity is not None:  # security configured: the device made one
                aggregator.store.enroll(config.device_id, identity.public_text)
        _run_all(aggregator, clients, fleet, cfg.timeout_s)
        wall_s = time.monotonic() - started
        summary = _summary(cfg, aggregator, clients, broker.kind, wall_s, workdir)
        if dashboard_url:
            summary["dashboard_url"] = dashboard_url
        return summary


@contextmanager
def _dashboard(port: int | None, workdir: Path) -> Iterator[str | None]:
    """The gateway's dashboard over the demo's store while the federation runs.

    The URL goes to stderr at once, since with port 0 nobody could guess it, and stdout
    stays clean for --json.
    """
    if port is None:
        yield None
        return
    # the store's path as _aggregator_config sets it; the web app opens it per request
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


class _Secure:
    """The secure demo's gateway setup, made the way an operator would make it: a broker
    config with TLS, passwords and per-device ACLs, signing keys, every device enrolled."""

    def __init__(self, folder: Path, devices: int) -> None:
        self.folder = folder
        self.port = free_port()
        # mosquitto started as root drops to the `mosquitto` user, which must be able to
        # walk to its files: they get a folder of their own that it can enter (the private
        # keys inside are not world-readable).
        self.broker_folder = Path(tempfile.mkdtemp(prefix="fedge-demo-broker-"))
        self.broker_folder.chmod(0o755)
        self.files = write_broker_config(
            BrokerSecurityPlan("demo", tuple(f"device-{i}" for i in range(devices)),
                               host="127.0.0.1", port=self.port), self.broker_folder)

    def clean_up(self, keep_in: Path | None) -> None:
        """After the broker stopped: move its files (CA key included) to `keep_in`, or
        remove them, so that nothing of the demo's security stays in /tmp."""
        if keep_in is not None:
            shutil.rmtree(keep_in, ignore_errors=True)
            shutil.move(str(self.broker_folder), str(keep_in))
        else:
            shutil.rmtree(self.broker_folder, ignore_errors=True)

    def start_broker(self) -> MosquittoBroker:
        return MosquittoBroker.start_with_conf(self.files.conf, self.port)

    def _auth(self, user: str) -> BrokerAuth:
        password = self.broker_folder / "credentials" / f"{user}.txt"
        return BrokerAuth(ca_file=self.files.ca_cert, username=user, password_file=password)

    def aggregator(self) -> tuple[AggregatorSecurity, BrokerAuth]:
        key = self.folder / "aggregator.key"
        return AggregatorSecurity(enabled=True, key_file=key), self._auth("aggregator")

    def device(self, index: int, aggregator: Aggregator) -> tuple[DeviceSecurity, BrokerAuth]:
        assert aggregator.identity is not None
        security = DeviceSecurity(key_file=self.folder / f"device-{index}.key",
                                  aggregator_key=aggregator.identity.public_text)
        return security, self._auth(f"device-{index}")


def _profile(cfg: DemoConfig) -> Profile:
    if cfg.profile == "diurnal":
        return Diurnal(period_s=cfg.day_s, seed=cfg.seed)
    return profile_by_name(cfg.profile, cfg.seed)


def _sync_config(cfg: DemoConfig) -> SyncConfig:
    """All devices each round when they are always there; else what a real fleet needs:
    a smaller target, over-selection and a deadline."""
    if cfg.profile == "always":
        return SyncConfig(target_updates=cfg.devices, wait_for_devices_s=30.0,
                          min_fraction=_min_fraction(cfg, cfg.devices, 0.6))
    target = max(1, math.ceil(0.6 * cfg.devices))
    return SyncConfig(target_updates=target, over_selection=0.5, round_timeout_s=2.5,
                      min_fraction=_min_fraction(cfg, target, 0.5), wait_for_devices_s=1.0)


def _min_fraction(cfg: DemoConfig, target: int, usual: float) -> float:
    """`usual`, raised under --secagg until a version needs the protocol's minimum of
    devices (a secure sum of fewer would be one device's update, or two that know each
    other's)."""
    if not cfg.secagg:
        return usual
    return min(1.0, max(usual, MIN_PARTICIPANTS / target))


def _aggregator_config(cfg: DemoConfig, host: str, port: int,
                       workdir: Path) -> AggregatorConfig:
    train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                        momentum=cfg.momentum)
    downlink = (DownlinkConfig(delta=False, full=cfg.full_model) if cfg.downlink == "full"
                else DownlinkConfig(codec=parse_codec(cfg.downlink) or DENSE,
                                    full=cfg.full_model))
    return AggregatorConfig(
        federation="demo", host=host, port=port, db_path=workdir / "aggregator.sqlite3",
        mode=cfg.mode, rounds=model_versions(cfg), seed=cfg.seed, train=train,
        uplink=_uplink(cfg), downlink=downlink,
        sync=_sync_config(cfg),
        async_=AsyncConfig(buffer_size=min(cfg.buffer_size, cfg.devices)),
        # f = the attackers there are, as benchmarks/poisoning.py sets it
        strategy=StrategyConfig(name=cfg.strategy, byzantine=cfg.attackers),
        privacy=PrivacyConfig(mode=cfg.dp, clip=cfg.clip,
                              noise_multiplier=cfg.noise_multiplier,
                              target_epsilon=cfg.target_epsilon),
        secagg=SecAggConfig(enabled=cfg.secagg),
    )


def _uplink(cfg: DemoConfig) -> CodecConfig | None:
    spec = uplink_spec(cfg)
    return parse_codec(spec) if spec is not None else None  # None: dense, or secagg


def _run_all(aggregator: Aggregator, clients: list[EdgeClient], fleet: SimulatedFleet,
             timeout_s: float) -> None:
    """Run every party on its own thread; the first error anywhere ends the demo."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(target: Callable[[threading.Event], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target(stop)
            except BaseException as exc:
                errors.append(exc)
                stop.set()
        return run

    agg_thread = threading.Thread(target=guarded(aggregator.run), name="aggregator",
                                  daemon=True)
    threading.Thread(target=fleet.run, args=(stop,), name="simulator", daemon=True).start()
    threads = [threading.Thread(target=guarded(c.run), name=c.config.device_id, daemon=True)
               for c in clients]
    for t in [agg_thread, *threads]:
        t.start()
    agg_thread.join(timeout_s)
    timed_out = agg_thread.is_alive()
    if timed_out or errors:
        stop.set()
    for t in [agg_thread, *threads]:
        t.join(30)
    stop.set()
    if errors:
        raise RuntimeError(f"a demo party failed: {errors[0]!r}") from errors[0]
    if timed_out:
        raise TimeoutError(f"the federation did not finish within {timeout_s:.0f} s")


def _summary(cfg: DemoConfig, aggregator: Aggregator, clients: list[EdgeClient],
             broker_kind: str, wall_s: float, workdir: Path) -> dict[str, Any]:
    history = [h.to_json() for h in aggregator.history if h.version > 0]
    train_s = [t for c in clients for t in c.stats.train_s]
    round_walls = [h["round_wall_s"] for h in history]
    update_bytes = sum(c.stats.update_bytes for c in clients)
    dense_bytes = sum(c.stats.dense_bytes for c in clients)
    parameters = int(sum(w.size for w in aggregator.global_weights.values()))
    if cfg.secagg:  # devices count no update bytes then: the masked vectors are the update
        update_bytes = sum(h["update_bytes"] for h in history)
        dense_bytes = 4 * parameters * sum(h["updates"] for h in history)
    device_rounds = max(1, cfg.devices * len(history))
    return {
        "final_accuracy": history[-1]["accuracy"] if history else None,
        "rounds": cfg.rounds,
        "model_versions": len(history),
        "devices": cfg.devices,
        "mode": cfg.mode,
        "broker": broker_kind,
        "bytes_up": sum(c.stats.bytes_up for c in clients),
        "bytes_down": sum(c.stats.bytes_down for c in clients),
        "wall_s": round(wall_s, 3),
        "round_wall_s_median": _median(round_walls),
        "train_s_median": _median(train_s),
        # A round's wall time less its slowest training; async versions overlap training,
        # so there it means nothing and is left out.
        "round_overhead_s_median": _median(
            [h["round_wall_s"] - h.get("max_train_s", 0.0) for h in history])
        if cfg.mode == "sync" else None,
        "updates_accepted": sum(c.stats.acks["accepted"] for c in clients),
        "profile": cfg.profile,
        "secure": cfg.secure,
        "rejected_updates": sum(c.stats.acks["rejected"] for c in clients),
        "skipped_by_reason": dict(sum((c.stats.skipped for c in clients), Counter())),
        "stopped_mid_training": sum(c.stats.stopped_mid_training for c in clients),
        "late_updates": sum(c.stats.acks["late"] for c in clients),
        "uplink_codec": (f"secagg-fixed-point ({aggregator.config.secagg.value_bits}-bit)"
                         if cfg.secagg else describe(aggregator.config.uplink)),
        "downlink_codec": (aggregator.config.downlink.codec.name()
                           if aggregator.config.downlink.delta else "full"),
        "uplink_compression": round(dense_bytes / max(1, update_bytes), 1),
        "update_bytes": update_bytes,
        "bytes_up_per_device_round": round(sum(c.stats.bytes_up for c in clients)
                                           / device_rounds),
        "bytes_down_per_device_round": round(sum(c.stats.bytes_down for c in clients)
                                             / device_rounds),
        "models_via_delta": sum(c.stats.models_via_delta for c in clients),
        "accuracy_per_version": [round(h["accuracy"], 4) for h in history],
        "update_bytes_per_version": [h["update_bytes"] for h in history],
        "parameters": parameters,
        "workdir": str(workdir),
        "secagg": _secagg_summary(history) if cfg.secagg else None,
        "privacy": _privacy_summary(cfg, aggregator, history) if cfg.dp != "off" else None,
        "strategy": cfg.strategy,
        "attackers": [f"device-{i}" for i in range(cfg.attackers)],
        "attack": cfg.attack if cfg.attackers else None,
    }


def _secagg_summary(history: list[dict]) -> dict[str, Any]:
    """From each version's info "secagg" dict: who made the sum, who dropped, and the
    bytes the aggregator received per device over the round's four phases."""
    rounds = [h["secagg"] for h in history if isinstance(h.get("secagg"), dict)]
    return {
        "secure_rounds": len(rounds),
        "contributors_per_round": [r["contributors"] for r in rounds],
        "dropouts_per_round": [r["invited"] - r["contributors"] for r in rounds],
        "bytes_per_device_round": round(sum(r["bytes_in"] for r in rounds)
                                        / max(1, sum(r["joined"] for r in rounds))),
        "modulus_bits": rounds[0]["bits"] if rounds else None,
        "graph_degree": rounds[0]["degree"] if rounds else None,
    }


def _privacy_summary(cfg: DemoConfig, aggregator: Aggregator,
                     history: list[dict]) -> dict[str, Any]:
    """The accountant's figures after the last version, and whether the budget ended
    training before --rounds."""
    private = [h for h in history if "epsilon" in h]
    store = Store(aggregator.config.db_path)  # the service closed its own at the end
    try:
        stopped = store.note(STOPPED_NOTE)
    finally:
        store.close()
    return {
        "mode": cfg.dp,
        "epsilon": private[-1]["epsilon"] if private else 0.0,
        "delta": aggregator.privacy.delta,
        "noise_multiplier": cfg.noise_multiplier,
        "clip": cfg.clip,
        "target_epsilon": cfg.target_epsilon,
        "budget_stopped_training": stopped is not None,
        "stopped_reason": stopped,
        # what the accountant composed, version by version: (q, z)
        "sampling_rate_per_version": [h["dp_sampling_rate"] for h in private],
        "accounted_noise_multiplier_per_version": [h["dp_noise_multiplier"]
                                                   for h in private],
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None
