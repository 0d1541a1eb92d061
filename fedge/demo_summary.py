"""The summary `fedge demo` prints (and --json writes): accuracy, bytes, rounds, privacy."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.personalize import merged
from aggregator.service import STOPPED_NOTE, Aggregator
from aggregator.store import Store
from fedge.codec_spec import describe
from fedge.federation import FederationResult

if TYPE_CHECKING:
    from fedge.demo import Demo


def summarize(demo: Demo, result: FederationResult, aggregator: Aggregator,
              broker_kind: str, wall_s: float, workdir: Path) -> dict[str, Any]:
    config, fleet = aggregator.config, demo.fleet
    history = result.history
    stats = list(result.device_stats.values())
    train_s = [t for s in stats for t in s.train_s]
    round_walls = [h["round_wall_s"] for h in history]
    update_bytes = sum(s.update_bytes for s in stats)
    dense_bytes = sum(s.dense_bytes for s in stats)
    parameters = result.parameters
    secagg = config.secagg.enabled
    if secagg:  # devices count no update bytes then: the masked vectors are the update
        update_bytes = sum(h["update_bytes"] for h in history)
        dense_bytes = 4 * parameters * sum(h["updates"] for h in history)
    device_rounds = max(1, fleet.devices * len(history))
    return {**_heterogeneity(config, history), **{
        "final_accuracy": history[-1]["accuracy"] if history else None,
        "rounds": fleet.rounds,
        "model_versions": len(history),
        "devices": fleet.devices,
        "mode": config.mode,
        "broker": broker_kind,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "wall_s": round(wall_s, 3),
        "round_wall_s_median": _median(round_walls),
        "train_s_median": _median(train_s),
        # A round's wall time less its slowest training; async versions overlap training,
        # so there it means nothing and is left out.
        "round_overhead_s_median": _median(
            [h["round_wall_s"] - h.get("max_train_s", 0.0) for h in history])
        if config.mode == "sync" else None,
        "updates_accepted": sum(s.acks["accepted"] for s in stats),
        "profile": fleet.profile,
        "secure": fleet.secure,
        "rejected_updates": sum(s.acks["rejected"] for s in stats),
        "skipped_by_reason": dict(sum((s.skipped for s in stats), Counter())),
        "stopped_mid_training": sum(s.stopped_mid_training for s in stats),
        **({"partial_updates": sum(s.partial_updates for s in stats),
            "partial_work": config.train.partial_work}
           if config.train.partial_work != "off" else {}),
        "late_updates": sum(s.acks["late"] for s in stats),
        "uplink_codec": (f"secagg-fixed-point ({config.secagg.value_bits}-bit)"
                         if secagg else describe(config.uplink)),
        "downlink_codec": (config.downlink.codec.name() if config.downlink.delta
                           else "full"),
        "uplink_compression": round(dense_bytes / max(1, update_bytes), 1),
        "update_bytes": update_bytes,
        "bytes_up_per_device_round": round(result.bytes_up / device_rounds),
        "bytes_down_per_device_round": round(result.bytes_down / device_rounds),
        "models_via_delta": sum(s.models_via_delta for s in stats),
        "accuracy_per_version": [round(h["accuracy"], 4) for h in history],
        "update_bytes_per_version": [h["update_bytes"] for h in history],
        "parameters": parameters,
        "workdir": str(workdir),
        "secagg": _secagg_summary(history) if secagg else None,
        "privacy": (_privacy_summary(aggregator, history)
                    if config.privacy.mode != "off" else None),
        "strategy": config.strategy.name,
        **({"weighting": config.strategy.weighting}
           if config.strategy.weighting != "samples" else {}),
        "attackers": [f"device-{i}" for i in range(fleet.attackers)],
        "attack": fleet.attack if fleet.attackers else None,
    }}


def _heterogeneity(config: Any, history: list[dict]) -> dict[str, Any]:
    """--personalize: each device's global vs personal accuracy on its held-out data;
    --clusters: which cluster each device chose and each cluster's test accuracy. From
    each device's latest figures over the versions; nothing when both are off."""
    personalize, clusters = config.personalize.mode != "off", config.clusters.on
    if not (personalize or clusters):
        return {}
    info = merged(h.get("personal") for h in history) or {}
    devices = info.get("devices", {})
    out: dict[str, Any] = {}
    if personalize:
        out["personal"] = {
            "mode": config.personalize.mode,
            "global_accuracy": info.get("global_accuracy"),
            "personal_accuracy": info.get("personal_accuracy"),
            "per_device": {d: {k: round(v, 4) for k, v in row.items() if k != "cluster"}
                           for d, row in devices.items()}}
    if clusters:
        last = history[-1] if history else {}
        out["clusters"] = {
            "k": config.clusters.k,
            "membership": {d: int(row["cluster"]) for d, row in devices.items()
                           if "cluster" in row},
            "sizes": info.get("cluster_sizes", {}),
            "global_accuracy_on_own_data": info.get("global_accuracy"),
            "test_accuracy": [round(last[f"cluster{c}_accuracy"], 4)
                              for c in range(config.clusters.k)
                              if f"cluster{c}_accuracy" in last]}
    return out


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


def _privacy_summary(aggregator: Aggregator, history: list[dict]) -> dict[str, Any]:
    """The accountant's figures after the last version, and whether the budget ended
    training before --rounds."""
    privacy = aggregator.config.privacy
    private = [h for h in history if "epsilon" in h]
    store = Store(aggregator.config.store_location)  # the service closed its own at the end
    try:
        stopped = store.note(STOPPED_NOTE)
    finally:
        store.close()
    return {
        "mode": privacy.mode,
        "epsilon": private[-1]["epsilon"] if private else 0.0,
        "delta": aggregator.privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "clip": privacy.clip,
        "target_epsilon": privacy.target_epsilon,
        "budget_stopped_training": stopped is not None,
        "stopped_reason": stopped,
        # what the accountant composed, version by version: (q, z)
        "sampling_rate_per_version": [h["dp_sampling_rate"] for h in private],
        "accounted_noise_multiplier_per_version": [h["dp_noise_multiplier"]
                                                   for h in private],
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None
