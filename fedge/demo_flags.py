"""`fedge demo`'s flags, mapped onto the real AggregatorConfig and the demo's fleet.

The flags that tune the gateway (mode, rounds, training, codecs, strategy, privacy,
secure aggregation) become an AggregatorConfig, with the defaults the demo job needs; the
rest say what the demo simulates (DemoFleet). Benchmarks call `parse_demo_flags` with
the flags a user would type, so they run exactly what `fedge demo` runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from aggregator.clusters import ClustersConfig
from aggregator.config import AggregatorConfig, AsyncConfig, DownlinkConfig, SyncConfig
from aggregator.drift import DriftConfig
from aggregator.lifecycle import RolloutConfig
from aggregator.personalize import PersonalizeConfig
from aggregator.privacy.config import PrivacyConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.strategy import STRATEGIES, StrategyConfig
from aggregator.strategy.contribution import WEIGHTINGS
from edge_client.shared.clusters import MAX_CLUSTERS
from edge_client.shared.codecs import DENSE
from edge_client.shared.protocol import TrainConfig
from edge_client.shared.secagg.graph import MIN_PARTICIPANTS
from edge_client.shared.train_config import PARTIAL_WORK
from fedge.codec_spec import parse_codec
from fedge.demo import Demo, DemoFleet
from fedge.demo_drift import drift_rule
from fedge.poisoning import ATTACKS
from fedge.rollout_demo import demo_rollout

# The median L2 norm of a device's update over a run of the demo job without DP
# (benchmarks/privacy.py measured 0.497 with 5 devices and 0.463 with 10): a clip near it
# keeps the clipped mean close to the real one, and z = 0.5 kept 0.80 to 0.93 accuracy.
DEFAULT_DP_CLIP = 0.5
DP_MODES = ("off", "central", "distributed")
# The most compression that kept the demo job at >= 0.95 in our runs (docs/compression.md):
# top-k 1% at 4 bits in sync rounds; buffered async is noisier (each version comes from
# three non-IID devices), and only 8-bit dense updates held 0.95 there in every run.
DEFAULT_UPLINK = {"sync": "topk=0.01,q4", "async": "q8"}
# Under central DP the noise covers every coordinate while a top-k 1% update clipped to C
# carries little of it: the demo job fell to 0.41 accuracy with topk=0.01,q4 and held
# 0.83 with q8 (0.85 dense) at z = 0.5, C = 0.5, 5 devices, 10 rounds.
DP_CENTRAL_UPLINK = "q8"
# With partial work on, FedProx's proximal term keeps the shorter fits' updates close to
# the global model (benchmarks/stragglers.py runs the same mu).
STRAGGLER_PROX_MU = 0.01


def add_demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10,
                   help="rounds of device work; async makes rounds*devices/buffer versions")
    p.add_argument("--mode", choices=("sync", "async"), default="sync")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--buffer-size", type=int, default=3,
                   help="async: aggregate every K updates")
    p.add_argument("--uplink", default=None,
                   help="update codec, e.g. 'topk=0.01,q4', 'randk=0.05,q8', 'f16', 'dense' "
                        "(default: topk=0.01,q4 in sync mode, q8 in async mode or with "
                        "--dp central; --secagg sends its own fixed-point integers)")
    p.add_argument("--downlink", default="q8",
                   help="model delta codec, e.g. 'q8', 'q4'; 'full' sends whole models only")
    p.add_argument("--full-model", choices=("f32", "f16"), default="f32",
                   help="precision of whole models sent to devices")
    p.add_argument("--profile", choices=("always", "diurnal"), default="always",
                   help="device behaviour: always eligible, or simulated days of charging, "
                        "use and flaky Wi-Fi")
    p.add_argument("--stragglers", action="store_true",
                   help="devices of log-normal speeds (the slowest 10x the fastest); sync "
                        "rounds get a deadline (--round-timeout) and partial work")
    p.add_argument("--partial-work", choices=PARTIAL_WORK, default=None,
                   help="what a fit cut short sends (docs/heterogeneity.md); default: "
                        "'deadline' with --stragglers, else 'off'")
    p.add_argument("--round-timeout", type=float, default=None,
                   help="sync: the round deadline in seconds (default: 1.0 with "
                        "--stragglers)")
    p.add_argument("--day-s", type=float, default=20.0,
                   help="diurnal: wall seconds per simulated day")
    p.add_argument("--secure", action="store_true",
                   help="TLS, passwords and per-device ACLs at mosquitto; signed updates, "
                        "models, tasks and acks; every device enrolled")
    p.add_argument("--workdir", type=Path, help="keep the SQLite store and device state here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON last")
    p.add_argument("--dashboard", type=int, metavar="PORT", default=None,
                   help="serve the gateway dashboard while the federation runs, on "
                        "127.0.0.1:PORT only (0: a free port), without tokens: anyone on "
                        "this machine can read it; needs the aggregator extra")
    p.add_argument("--secagg", action="store_true",
                   help="secure aggregation of sync rounds: the aggregator sees only the "
                        "sum of the updates (replaces --uplink; needs >= 3 devices)")
    p.add_argument("--dp", choices=DP_MODES, default="off",
                   help="differential privacy: central (the aggregator clips and adds noise) "
                        "or distributed (each device does; needs --secagg)")
    p.add_argument("--noise-multiplier", type=float, default=0.5,
                   help="DP: z, the noise std over the clip")
    p.add_argument("--clip", type=float, default=DEFAULT_DP_CLIP,
                   help="DP: C, the L2 bound on each device's update (default: about the "
                        "median update norm of the demo job)")
    p.add_argument("--target-epsilon", type=float, default=0.0,
                   help="DP: stop training before epsilon (at delta 1e-5) would pass this; "
                        "0: no budget")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="fedavg",
                   help="aggregation rule: fedavg, a server optimizer or a robust rule")
    p.add_argument("--attackers", type=int, default=0, metavar="K",
                   help="the first K devices send poisoned updates")
    p.add_argument("--attack", choices=tuple(ATTACKS), default="sign_flip",
                   help="sign_flip: the honest update reversed; scale10: boosted tenfold")
    p.add_argument("--personalize", nargs="?", const="layers", default="off",
                   choices=("off", "layers", "ditto"),
                   help="personal models: 'layers' keeps the output layer on each device "
                        "(FedPer), 'ditto' a whole personal model; the summary reports "
                        "global vs personal accuracy on each device's held-out fifth")
    p.add_argument("--personal-layers", default="dense1.",
                   help="--personalize layers: tensor-name prefixes kept on the device, "
                        "comma-separated (default: the MLP's output layer)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="samples",
                   help="how much each update counts: its samples (FedAvg), samples x the "
                        "global model's loss on the device's data ('loss', q-FFL), or "
                        "samples x the loss its training removed; a mean-based strategy")
    p.add_argument("--clusters", type=int, default=1, metavar="K",
                   help="K global models (IFCA): each device trains the one with the lowest "
                        "loss on its data; the summary reports the membership")
    p.add_argument("--sites", type=int, default=0,
                   help="two tiers: this many site gateways, each federating its own "
                        "devices, under one top aggregator (docs/tiers.md); replaces --devices")
    p.add_argument("--devices-per-site", type=int, default=5, help="with --sites")
    p.add_argument("--site-versions", type=int, default=2,
                   help="with --sites: site versions per top version (each site's "
                        "[upper] every_versions)")
    p.add_argument("--drift-at", type=int, default=None, metavar="R",
                   help="devices serve their model and watch their inputs; from round R "
                        "on, half of them see shifted inputs, and the gateway's [drift] "
                        "rule opens a retraining campaign (docs/lifecycle.md)")
    p.add_argument("--rollout", action="store_true",
                   help="staged rollout: canary devices evaluate each candidate on held-out "
                        "data before it is served (docs/lifecycle.md)")
    p.add_argument("--bad-candidate", type=int, default=None, metavar="N",
                   help="with --rollout: corrupt the N-th candidate on purpose, so the "
                        "canaries catch it and it is rolled back")


def parse_demo_flags(argv: list[str]) -> Demo:
    """The Demo that `fedge demo *argv` runs (for benchmarks and tests)."""
    parser = argparse.ArgumentParser(prog="fedge demo")
    add_demo_flags(parser)
    return demo_from_flags(parser.parse_args(argv))


def demo_from_flags(args: argparse.Namespace) -> Demo:
    """Refuse combinations that cannot run, with the flags named, before anything starts;
    then the gateway's config, whose own checks (a robust strategy under DP or secure
    aggregation, Krum with too few devices) are refused here too."""
    _check(args)
    if args.sites:
        _check_sites(args)
        args.devices = args.sites * args.devices_per_site
    fleet = DemoFleet(devices=args.devices, rounds=args.rounds, alpha=args.alpha,
                      profile="stragglers" if args.stragglers else args.profile,
                      day_s=args.day_s, broker=args.broker,
                      secure=args.secure, workdir=args.workdir,
                      dashboard_port=args.dashboard, attackers=args.attackers,
                      attack=args.attack, sites=args.sites,
                      devices_per_site=args.devices_per_site,
                      site_versions=args.site_versions, drift_at=args.drift_at,
                      rollout=args.rollout, bad_candidate=args.bad_candidate)
    try:
        return Demo(aggregator_config(args), fleet)
    except ValueError as exc:  # ConfigError is one; the message names the TOML keys
        raise ValueError(f"these demo flags do not work together: {exc}") from None


def _check(args: argparse.Namespace) -> None:
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, not {args.devices}")
    for flag, value in (("--rounds", args.rounds), ("--buffer-size", args.buffer_size),
                        ("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:  # the demo runs a fixed job: 0 rounds would never end
            raise ValueError(f"{flag} must be >= 1, not {value}")
    for flag, number in (("--day-s", args.day_s), ("--lr", args.lr), ("--alpha", args.alpha)):
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"{flag} must be a number > 0, not {number}")
    if args.stragglers and args.profile != "always":
        raise ValueError("--stragglers is a profile of its own; leave out --profile")
    if args.round_timeout is not None and not args.round_timeout > 0:
        raise ValueError(f"--round-timeout must be > 0, not {args.round_timeout}")
    if not 0 <= args.momentum < 1:
        raise ValueError(f"--momentum must be 0 or more and below 1, not {args.momentum}")
    if args.secagg and args.mode != "sync":
        raise ValueError("--secagg needs --mode sync: secure aggregation sums one round's "
                         "updates, and async buffers have no rounds")
    if args.secagg and args.uplink is not None:
        raise ValueError(f"--secagg replaces the uplink codec (devices send fixed-point "
                         f"integers under masks); leave out --uplink {args.uplink!r}")
    if args.secagg and args.devices < MIN_PARTICIPANTS:
        raise ValueError(f"--secagg needs at least {MIN_PARTICIPANTS} devices, "
                         f"not {args.devices}")
    if args.dp == "distributed" and not args.secagg:
        raise ValueError("--dp distributed needs --secagg: each device adds a share of the "
                         "noise, which hides the mean only when the server sees no single "
                         "update")
    if not 1 <= args.clusters <= MAX_CLUSTERS:
        raise ValueError(f"--clusters must be 1 to {MAX_CLUSTERS}, not {args.clusters}")
    if args.clusters > 1 and (args.secagg or args.dp != "off"):
        raise ValueError("--clusters cannot run with --secagg or --dp: each update names "
                         "its cluster in the clear")
    if args.clusters > 1 and args.rollout:
        raise ValueError("--clusters cannot run with --rollout: canaries judge one model per "
                         "version, a clustered version holds k")
    if args.drift_at is not None and not 1 <= args.drift_at < args.rounds:
        raise ValueError(f"--drift-at must be from 1 to {args.rounds - 1} (before the last "
                         f"round, so the drift is seen while training runs), "
                         f"not {args.drift_at}")
    if args.bad_candidate is not None and not args.rollout:
        raise ValueError("--bad-candidate needs --rollout: without canaries nothing would "
                         "catch it")
    if args.bad_candidate is not None and not 1 <= args.bad_candidate <= args.rounds:
        raise ValueError(f"--bad-candidate must be 1 to --rounds ({args.rounds}), not "
                         f"{args.bad_candidate}")
    if args.rollout and args.mode != "sync":
        raise ValueError("--rollout needs --mode sync in the demo")
    if not 0 <= args.attackers < args.devices:
        raise ValueError(f"--attackers must be 0 to {args.devices - 1} (fewer than "
                         f"--devices), not {args.attackers}")


def _check_sites(args: argparse.Namespace) -> None:
    for flag, value in (("--sites", args.sites), ("--devices-per-site", args.devices_per_site),
                        ("--site-versions", args.site_versions)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, not {value}")
    for flag, used in (("--secure", args.secure), ("--secagg", args.secagg),
                       ("--dp", args.dp != "off"), ("--attackers", args.attackers),
                       ("--dashboard", args.dashboard is not None),
                       ("--mode async", args.mode != "sync"),
                       ("--profile diurnal", args.profile != "always")):
        if used:
            raise ValueError(f"--sites runs sync tiers of always-on devices; {flag} is not "
                             "part of the tiered demo yet (docs/tiers.md)")


def aggregator_config(args: argparse.Namespace) -> AggregatorConfig:
    """The gateway's config for these flags; run_demo puts its store in the workdir."""
    partial = args.partial_work or ("deadline" if args.stragglers else "off")
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        momentum=args.momentum, partial_work=partial,
                        prox_mu=STRAGGLER_PROX_MU if partial != "off" else 0.0)
    downlink = (DownlinkConfig(delta=False, full=args.full_model) if args.downlink == "full"
                else DownlinkConfig(codec=parse_codec(args.downlink) or DENSE,
                                    full=args.full_model))
    uplink = uplink_spec(args)
    return AggregatorConfig(
        federation="demo", db_path=Path("aggregator.sqlite3"), mode=args.mode,
        rounds=model_versions(args), seed=args.seed, train=train,
        uplink=parse_codec(uplink) if uplink is not None else None,  # None: dense, secagg
        downlink=downlink, sync=_sync_config(args),
        async_=AsyncConfig(buffer_size=min(args.buffer_size, args.devices)),
        # f = the attackers there are, as benchmarks/poisoning.py sets it
        strategy=StrategyConfig(name=args.strategy, byzantine=args.attackers,
                                weighting=args.weighting),
        privacy=PrivacyConfig(mode=args.dp, clip=args.clip,
                              noise_multiplier=args.noise_multiplier,
                              target_epsilon=args.target_epsilon),
        secagg=SecAggConfig(enabled=args.secagg),
        personalize=PersonalizeConfig(
            mode=args.personalize,
            personal_layers=[n for n in args.personal_layers.split(",") if n]
            if args.personalize == "layers" else []),
        clusters=ClustersConfig(k=args.clusters),
        drift=drift_rule(args.devices) if args.drift_at is not None else DriftConfig(),
        rollout=demo_rollout(args.devices) if args.rollout else RolloutConfig(),
    )


def uplink_spec(args: argparse.Namespace) -> str | None:
    """The update codec; None with --secagg, whose fixed-point encoding replaces it."""
    if args.secagg:
        return None
    if args.uplink is not None:
        return str(args.uplink)
    return DP_CENTRAL_UPLINK if args.dp == "central" else DEFAULT_UPLINK[args.mode]


def model_versions(args: argparse.Namespace) -> int:
    """Versions to produce so that both modes get the same device work.

    A sync round takes one update from each device; in async mode a version takes
    `buffer_size` updates, so `rounds` rounds of work are rounds*devices/K versions.
    """
    if args.mode == "sync":
        return int(args.rounds)
    return math.ceil(args.rounds * args.devices / min(args.buffer_size, args.devices))


def _sync_config(args: argparse.Namespace) -> SyncConfig:
    """All devices each round when they are always there; else what a real fleet needs:
    a smaller target, over-selection and a deadline."""
    if args.stragglers or args.round_timeout is not None:
        return SyncConfig(target_updates=args.devices, wait_for_devices_s=30.0,
                          round_timeout_s=args.round_timeout or 1.0, deadline_growth=1.0,
                          min_fraction=_min_fraction(args, args.devices, 0.4))
    if args.profile == "always":
        return SyncConfig(target_updates=args.devices, wait_for_devices_s=30.0,
                          min_fraction=_min_fraction(args, args.devices, 0.6))
    target = max(1, math.ceil(0.6 * args.devices))
    return SyncConfig(target_updates=target, over_selection=0.5, round_timeout_s=2.5,
                      min_fraction=_min_fraction(args, target, 0.5), wait_for_devices_s=1.0)


def _min_fraction(args: argparse.Namespace, target: int, usual: float) -> float:
    """`usual`, raised under --secagg until a version needs the protocol's minimum of
    devices (a secure sum of fewer would be one device's update, or two that know each
    other's)."""
    if not args.secagg:
        return usual
    return min(1.0, max(usual, MIN_PARTICIPANTS / target))
